"""The quality gate: a version is published only if every model trained to finite losses and the serving model
(the best on the served pipeline's validation NDCG@10) beats, on the same users, every gate baseline: all-time
popularity and the served pipeline without a ranker (what users get when the ranker is down)."""

from __future__ import annotations

from collections.abc import Mapping

from starling.errors import StarlingError


class QualityGateError(StarlingError):
    """The new version was written but not published: the quality gate refused it."""


def gate_failures(
    valid_ndcgs: Mapping[str, float | None],
    failures: Mapping[str, str | None],
    baselines: Mapping[str, float],
    serving_model: str | None,
) -> dict[str, str]:
    """Reason (with the numbers) for every model that must not be published; empty when the version passes."""
    refused: dict[str, str] = {}
    for name, valid_ndcg in valid_ndcgs.items():
        if failures.get(name):
            refused[name] = f"training failed: {failures[name]}"
        elif valid_ndcg is None:
            refused[name] = "no validation NDCG@10 was measured"
    if serving_model is not None and serving_model not in refused:
        valid_ndcg = valid_ndcgs[serving_model]
        beaten = [f"{name} {value:.4f}" for name, value in baselines.items() if not valid_ndcg > value]
        if beaten:
            refused[serving_model] = (
                f"the served pipeline's validation NDCG@10 {valid_ndcg:.4f} is not above the baseline: "
                + ", ".join(beaten)
            )
    if serving_model is None and not refused:
        refused["(none)"] = "no model trained"
    return refused
