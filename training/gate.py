"""The quality gate: a ranking model is published only if it trained to finite losses and its valid AUC is
above the popularity baseline's valid AUC."""

from __future__ import annotations

from collections.abc import Mapping

from starling.errors import StarlingError


class QualityGateError(StarlingError):
    """The new version was written but not published: at least one model failed the quality gate."""


def gate_failures(
    valid_aucs: Mapping[str, float | None], failures: Mapping[str, str | None], popularity_valid_auc: float
) -> dict[str, str]:
    """Reason (with the numbers) for every model that must not be published; empty when all pass."""
    refused: dict[str, str] = {}
    for name, valid_auc in valid_aucs.items():
        if failures.get(name):
            refused[name] = f"training failed: {failures[name]}"
        elif valid_auc is None:
            refused[name] = "no valid AUC was measured"
        elif not valid_auc > popularity_valid_auc:
            refused[name] = (
                f"valid AUC {valid_auc:.4f} is not above the popularity baseline's {popularity_valid_auc:.4f}"
            )
    return refused
