"""`starling evaluate WORKDIR [--json]`: the served pipeline against tuned baselines, honestly.

Protocol ``time`` (the headline): the split's test cut-off. Every user who liked, after it, a movie they had
not rated before it is evaluated on those movies (seen movies excluded); users without any rating before it
are *cold*, the others *warm*, and every figure is reported for all, warm and cold users.

- ``pipeline`` is the served path replayed offline (training/replay.py): the snapshot the stack would have
  served at the cut-off (the recall state fitted on the ratings before it with the artifact's parameters,
  the entity features as of it), the artifact's serving model, the cold path and the re-ranking rules the
  services read. Training labels end at the valid cut-off, so nothing after the test cut-off was seen.
- Baselines (training/baselines.py) are tuned on the validation period (ratings before the valid cut-off,
  likes between the two cut-offs) over their stated grids, then fitted on the ratings before the test
  cut-off; the personalised ones give cold users the tuned recent popularity.
- ``intervals``: paired bootstrap (2,000 resamples of users) 95% intervals of pipeline minus each baseline.
- ``coverage``: the share of the evaluated likes among recall's candidates, per channel and in all.
- ``stages``: NDCG@10 of recall's order, of the ranker's order and after re-ranking (the served list), and
  the ranker's per-user AUC over the candidates (a diagnostic, not a goal).
- ``leave_last_out``: each user's last rating held out (users whose last rating falls after the test
  cut-off, so that no training label, refit included, is among them), everything else as history.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from starling.config import get_settings
from starling.errors import StarlingError
from starling.progress import progress
from training.baselines import (
    GRIDS,
    RetrievalTask,
    baseline_scorer,
    list_metrics,
    per_user_metrics,
    recent_popularity_vector,
    retrieval_task,
    task_from_frames,
    tune,
    tune_recent_popularity,
)
from training.plots import plot_evaluation
from training.ranking_metrics import grouped_auc, grouped_ndcg

METRICS = ("ndcg@10", "recall@10", "recall@50", "hit_rate@10")
BASELINES = ("popularity", "recent_popularity", "ease", "implicit_als", "item_knn")
SEGMENTS = ("all", "warm", "cold")
BOOTSTRAP_RESAMPLES = 2000
ALL_GAIN, WARM_GAIN = 1.05, 1.20  # the goals: pipeline >= 1.05 x best baseline (all), >= 1.2 x (warm)


class EvaluationError(StarlingError):
    """Evaluation cannot run: inputs missing or inconsistent."""


@dataclass
class EvaluationInputs:
    ratings: pl.DataFrame
    movies: pl.DataFrame
    artifact: Any  # training.artifacts.Artifact
    valid_cutoff: datetime
    test_cutoff: datetime
    split: dict[str, Any]


def load_inputs(workdir: Path) -> EvaluationInputs:
    """Ratings (with recorded feedback), catalog, split and the published artifact; clear errors otherwise."""
    from starling.features.inputs import load_inputs as load_frames
    from training.artifacts import load_artifact, resolve_artifact

    workdir = Path(workdir)
    split_path = workdir / "features" / "split.json"
    if not split_path.is_file():
        raise EvaluationError(f"{split_path} not found: run `starling features build {workdir}` first")
    movies_path = workdir / "movies.parquet"
    if not movies_path.is_file():
        raise EvaluationError(
            f"{movies_path} not found: run `starling data ingest SOURCE --out {workdir}` first"
        )
    artifact = load_artifact(resolve_artifact(workdir))
    training = artifact.manifest.get("training")
    if artifact.recall_state is None or not training:
        raise EvaluationError(
            f"{artifact.path}: trained before rank-for-top-N (no recall state); run `starling train {workdir}`"
        )
    ratings, movies = load_frames(workdir)
    return EvaluationInputs(
        ratings,
        movies,
        artifact,
        datetime.fromisoformat(training["valid_cutoff"]),
        datetime.fromisoformat(training["test_cutoff"]),
        json.loads(split_path.read_text()),
    )


# ----------------------------------------------------------------------------------------------- pipeline
@dataclass
class PipelineRun:
    lists: dict[int, list[np.ndarray]]  # per k of LIST_SIZES: each task user's answer
    served: list[Any]  # training.replay.Served per task user


def run_pipeline(
    inputs: EvaluationInputs, task: RetrievalTask, history: pl.DataFrame | None = None
) -> PipelineRun:
    """Replay the served pipeline for every task user on the snapshot at the task's cut-off (or on
    ``history`` when given: the leave-last-out protocol)."""
    from services.rerank.logic import load_rules
    from training.replay import OfflinePipeline, Ranker, snapshot_as_of
    from training.train import LIST_SIZES

    settings = get_settings()
    artifact = inputs.artifact
    state = artifact.recall_state
    if history is None:
        snapshot = snapshot_as_of(
            inputs.ratings, inputs.movies, task.cutoff, state.params, settings.like_threshold
        )
    else:
        snapshot = snapshot_as_of(history, inputs.movies, None, state.params, settings.like_threshold)
    ranker = Ranker.build(artifact.model(), artifact.spec, snapshot)
    rules = load_rules(settings.rerank_rules) if settings.rerank_rules else load_rules()
    pipeline = OfflinePipeline(snapshot, ranker, rules, settings.recall_size)
    served = []
    with progress(f"evaluate {task.name}: served pipeline", total=len(task.user_ids), unit="users") as step:
        for user in task.user_ids.tolist():  # one request per user, as the stack answers them
            served.append(pipeline.recommend(int(user), LIST_SIZES[0], also=LIST_SIZES[1:]))
            step.update()
    return PipelineRun({k: [s.lists[k] for s in served] for k in LIST_SIZES}, served)


def coverage(task: RetrievalTask, run: PipelineRun) -> dict[str, dict[str, float]]:
    """Share of the evaluated likes among the candidates, per channel and union, for all and warm users."""
    from services.recall.logic import CHANNEL_PRIORITY

    hits: dict[str, np.ndarray] = {}
    relevant = np.diff(task.relevant.indptr).astype(np.float64)
    names = [*CHANNEL_PRIORITY, "cold_start"]
    for name in [*names, "union"]:
        hits[name] = np.zeros(len(task.user_ids))
    for row, served in enumerate(run.served):  # one served request per user
        liked = task.catalog_ids[task.relevant[row].indices]
        found = np.isin(served.candidates, liked)
        hits["union"][row] = found.sum()
        for name in names:
            hits[name][row] = (found & (served.channels == name)).sum()
    out = {}
    for segment, mask in (("all", np.ones(len(task.user_ids), bool)), ("warm", task.warm)):
        total = relevant[mask].sum()
        out[segment] = {
            name: float(h[mask].sum() / total) if total else float("nan")
            for name, h in hits.items()
            if name == "union" or h.sum() > 0
        }
    out["candidates_per_user"] = (
        float(np.mean([len(s.candidates) for s in run.served])) if run.served else 0.0
    )
    return out


def stages(task: RetrievalTask, run: PipelineRun) -> dict[str, dict[str, float]]:
    """NDCG@10 of recall's order, the ranker's order and the served list; the ranker's per-user AUC."""
    sizes = np.array([len(s.candidates) for s in run.served])
    offsets = np.r_[0, np.cumsum(sizes)]
    liked_rows = [task.catalog_ids[task.relevant[row].indices] for row in range(len(task.user_ids))]
    labels = (
        np.concatenate(
            [
                np.isin(s.candidates, liked).astype(np.float64)
                for s, liked in zip(run.served, liked_rows, strict=True)
            ]
        )
        if run.served
        else np.empty(0)
    )
    n_relevant = np.diff(task.relevant.indptr)
    recall_order = np.concatenate([-np.arange(len(s.candidates), dtype=np.float64) for s in run.served])
    ranker_order = np.concatenate([s.scores.astype(np.float64) for s in run.served])
    served = list_metrics(task, run.lists)
    per_stage = {
        "recall_order": grouped_ndcg(recall_order, labels, offsets, n_relevant),
        "ranker_order": grouped_ndcg(ranker_order, labels, offsets, n_relevant),
        "served": served["ndcg@10"],
        "ranker_order_recall@50": _recall_at(ranker_order, labels, offsets, n_relevant, 50),
        "served_recall@50": served["recall@50"],
    }
    out: dict[str, dict[str, float]] = {}
    for segment, mask in (("all", np.ones(len(sizes), bool)), ("warm", task.warm)):
        out[segment] = {name: float(np.nanmean(values[mask])) for name, values in per_stage.items()}
        auc = grouped_auc(ranker_order, labels, offsets)[mask]
        out[segment]["ranker_auc"] = float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")
    return out


def _recall_at(
    scores: np.ndarray, labels: np.ndarray, offsets: np.ndarray, n_relevant: np.ndarray, k: int
) -> np.ndarray:
    """Per group: relevant rows among its ``k`` best by score, over all its relevant movies."""
    sizes = np.diff(offsets)
    group = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((np.arange(len(scores)), -scores, group))
    rank = np.arange(len(order)) - offsets[group[order]]
    hits = np.bincount(group[order], weights=(labels[order] > 0) & (rank < k), minlength=len(sizes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, hits / n_relevant, np.nan)


# ---------------------------------------------------------------------------------------------- reporting
def segment_means(task: RetrievalTask, per_user: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    masks = {"all": np.ones(len(task.user_ids), bool), "warm": task.warm, "cold": ~task.warm}
    return {
        segment: {
            **{
                metric: float(per_user[metric][mask].mean()) if mask.any() else float("nan")
                for metric in METRICS
            },
            "users": int(mask.sum()),
        }
        for segment, mask in masks.items()
    }


def paired_bootstrap(
    difference: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Mean of a per-user difference and its 95% percentile interval over resampled users."""
    if len(difference) == 0:
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(difference.mean()), "low": float(low), "high": float(high)}


def intervals(task: RetrievalTask, per_method: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    pipeline = per_method["pipeline"]["ndcg@10"]
    masks = {"all": np.ones(len(task.user_ids), bool), "warm": task.warm, "cold": ~task.warm}
    return {
        name: {
            segment: paired_bootstrap((pipeline - values["ndcg@10"])[mask]) for segment, mask in masks.items()
        }
        for name, values in per_method.items()
        if name != "pipeline"
    }


def goals(segments: dict[str, dict[str, dict[str, float]]], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The quality goals, each with its numbers and whether it is met."""
    out = {}
    for segment, gain in (("all", ALL_GAIN), ("warm", WARM_GAIN)):
        rows = segments[segment]
        baselines = {name: rows[name]["ndcg@10"] for name in BASELINES if name in rows}
        best = max(baselines, key=baselines.__getitem__)
        pipeline = rows["pipeline"]["ndcg@10"]
        goal = {
            "metric": f"ndcg@10 ({segment} users)",
            "pipeline": pipeline,
            "best_baseline": best,
            "best_baseline_value": baselines[best],
            "ratio": pipeline / baselines[best] if baselines[best] > 0 else float("inf"),
            "target_ratio": gain,
        }
        goal["met"] = bool(goal["ratio"] >= gain)
        if segment == "all":
            low = bootstrap[best]["all"]["low"]
            goal["interval_low"] = low
            goal["met"] = bool(goal["met"] and low > 0)
        out[segment] = goal
    ease = segments["warm"].get("ease", {}).get("recall@50", float("nan"))
    out["warm_recall@50_vs_ease"] = {
        "pipeline": segments["warm"]["pipeline"]["recall@50"],
        "ease": ease,
        "ratio": segments["warm"]["pipeline"]["recall@50"] / ease if ease and ease > 0 else float("nan"),
        "target_ratio": WARM_GAIN,
        "note": "the goal applies to synthetic data with planted tastes (tests/test_quality.py)",
    }
    return out


def evaluate_protocol(
    inputs: EvaluationInputs, valid: RetrievalTask, test: RetrievalTask, history: pl.DataFrame | None = None
) -> dict[str, Any]:
    """Tune every baseline on ``valid``, score them and the pipeline on ``test``; every section."""
    popular = tune_recent_popularity(valid)
    fallback_test = recent_popularity_vector(test, popular.params["half_life_days"])
    fallback_valid = recent_popularity_vector(valid, popular.params["half_life_days"])
    per_method: dict[str, dict[str, np.ndarray]] = {}
    tuning: dict[str, Any] = {}
    with progress(
        f"evaluate {test.name}: tune and score baselines", total=len(BASELINES), unit="baselines"
    ) as step:
        for name in BASELINES:
            tuned = popular if name == "recent_popularity" else tune(name, valid, fallback_valid)
            tuning[name] = {"chosen": tuned.params, "valid_ndcg@10": tuned.valid_ndcg, "grid": tuned.grid}
            per_method[name] = per_user_metrics(
                test, baseline_scorer(name, test, tuned.params, fallback_test)
            )
            step.update(**{name: round(float(per_method[name]["ndcg@10"].mean()), 3)})
    run = run_pipeline(inputs, test, history)
    per_method["pipeline"] = list_metrics(test, run.lists)
    segments = {segment: {} for segment in SEGMENTS}
    for name, per_user in per_method.items():
        for segment, values in segment_means(test, per_user).items():
            segments[segment][name] = values
    bootstrap = intervals(test, per_method)
    return {
        **segments,
        "intervals": bootstrap,
        "coverage": coverage(test, run),
        "stages": stages(test, run),
        "tuning": tuning,
        "goals": goals(segments, bootstrap),
    }


def leave_last_out(inputs: EvaluationInputs, valid: RetrievalTask) -> dict[str, Any]:
    """Each user's last rating held out, for users whose last rating is after the test cut-off."""
    settings = get_settings()
    ordered = inputs.ratings.sort("user_id", "event_timestamp", "movie_id")
    last = ordered.group_by("user_id", maintain_order=True).last()
    held_out = last.filter(
        (pl.col("event_timestamp") >= inputs.test_cutoff) & (pl.col("rating") >= settings.like_threshold)
    )
    keys = ["user_id", "movie_id", "event_timestamp"]
    history = ordered.join(held_out.select(keys), on=keys, how="anti")
    test = task_from_frames(
        "leave_last_out", history, held_out.select("user_id", "movie_id"), inputs.movies["movie_id"].to_numpy(),
        settings.like_threshold, cutoff=inputs.test_cutoff,
    )  # fmt: skip
    if len(test.user_ids) == 0:
        return {"users": 0}
    return evaluate_protocol(inputs, valid, test, history.sort("event_timestamp"))


def evaluate(workdir: Path, leave_last_out_protocol: bool = True) -> dict[str, Any]:
    """Evaluate on the test period (and leave-last-out); writes and returns the metrics object."""
    settings = get_settings()
    workdir = Path(workdir)
    inputs = load_inputs(workdir)
    catalog_ids = inputs.movies["movie_id"].to_numpy()
    valid = retrieval_task(
        "valid", inputs.ratings, catalog_ids, inputs.valid_cutoff, inputs.test_cutoff, settings.like_threshold
    )
    test = retrieval_task(
        "test", inputs.ratings, catalog_ids, inputs.test_cutoff, None, settings.like_threshold
    )
    if len(test.user_ids) == 0 or len(valid.user_ids) == 0:
        raise EvaluationError(f"{workdir}: nobody liked a new movie in the validation or the test period")
    metrics = {
        "protocol": "time",
        "artifact": {"version": inputs.artifact.version, "serving_model": inputs.artifact.serving_model},
        "cutoffs": {"valid": inputs.valid_cutoff.isoformat(), "test": inputs.test_cutoff.isoformat()},
        "split": inputs.split,
        **evaluate_protocol(inputs, valid, test),
        "grids": GRIDS,
    }
    if leave_last_out_protocol:
        metrics["leave_last_out"] = leave_last_out(inputs, valid)
    reports = workdir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    tmp = reports / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=float))
    os.replace(tmp, reports / "metrics.json")
    plot_evaluation(metrics, reports / "evaluation.png")
    return metrics


def _table(rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> list[str]:
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(column.rjust(12) for column in columns)]
    for name, values in sorted(rows.items(), key=lambda item: -item[1]["ndcg@10"]):
        lines.append(name.ljust(width) + "".join(f"{values[column]:12.4f}" for column in columns))
    return lines


def format_table(metrics: dict[str, Any]) -> str:
    """All/warm/cold tables, the intervals against each baseline, coverage, stages and the goals."""
    lines = [
        f"protocol: {metrics.get('protocol', '?')}, valid from {metrics['cutoffs']['valid']}, "
        f"test from {metrics['cutoffs']['test']}; serving model {metrics['artifact']['serving_model']}"
    ]
    for segment in SEGMENTS:
        rows = metrics[segment]
        users = next(iter(rows.values()))["users"]
        lines += ["", f"{segment} users ({users})", *_table(rows, METRICS)]
    lines += ["", "pipeline - baseline, NDCG@10, paired bootstrap 95% interval (all | warm | cold)"]
    for name, by_segment in metrics["intervals"].items():
        cells = [f"{v['difference']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]" for v in by_segment.values()]
        lines.append(f"  {name:<18}" + " | ".join(cells))
    cov = metrics["coverage"]
    lines += ["", f"coverage of the evaluated likes by recall's {cov['candidates_per_user']:.0f} candidates"]
    for segment in ("all", "warm"):
        lines.append(f"  {segment:<5} " + ", ".join(f"{k} {v:.3f}" for k, v in cov[segment].items()))
    lines += [
        "",
        "stages: NDCG@10 of recall's order, the ranker's, the served list; recall@50; ranker AUC (diagnostic)",
    ]
    for segment in ("all", "warm"):
        lines.append(
            f"  {segment:<5} " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["stages"][segment].items())
        )
    lines += ["", "goals"]
    for name, goal in metrics["goals"].items():
        if "met" in goal:
            lines.append(
                f"  {goal['metric']}: pipeline {goal['pipeline']:.4f} vs {goal['best_baseline']} "
                f"{goal['best_baseline_value']:.4f} = x{goal['ratio']:.3f} (goal x{goal['target_ratio']:.2f}"
                + (f", interval low {goal['interval_low']:+.4f} > 0" if "interval_low" in goal else "")
                + f"): {'met' if goal['met'] else 'not met'}"
            )
        else:
            lines.append(
                f"  {name}: pipeline {goal['pipeline']:.4f} vs EASE {goal['ease']:.4f} = x{goal['ratio']:.3f}"
            )
    llo = metrics.get("leave_last_out")
    if llo and llo.get("all"):
        lines += ["", f"leave-last-out ({llo['all']['pipeline']['users']} users), NDCG@10"]
        lines.append(
            "  "
            + ", ".join(
                f"{k} {v['ndcg@10']:.4f}"
                for k, v in sorted(llo["all"].items(), key=lambda i: -i[1]["ndcg@10"])
            )
        )
    return "\n".join(lines)
