"""Names of the ranker's KServe models: the published model, and versions pinned by experiment arms."""

from __future__ import annotations


def ranker_model_name(base: str, version: str | None = None) -> str:
    """``base`` (the published model, following `starling train --publish`) or ``base`` + "-" + ``version``
    (that version under WORKDIR/models, loaded because an experiment arm asks for it)."""
    return f"{base}-{version}" if version else base
