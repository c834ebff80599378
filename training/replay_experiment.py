"""Offline replay of experiment arms (`starling evaluate WORKDIR --replay [--experiment NAME] [--arms A,B]`):
the counterfactual check before an experiment goes live.

It walks the test period's likes in time order. At each like (user u liked movie m at time t) it asks the
served pipeline (training/replay.py, the services' own functions) for u's list *as of t*: the item side is the
snapshot the stack would serve at the test cut-off, the user's history holds every rating before t (earlier
events fed back, as the live stack would have received them). Each arm answers with its knobs
(services/common/experiments.py: ranker model/version/recall order/random, recall size and quotas, re-ranking on or
off); a hit is m in the arm's top k. Every arm sees the same events, so the comparison is paired.

Bounded: at most ``max_events`` likes (an even sample over the period, kept in time order). The ranker's user
features stay those of the cut-off (the live stack refreshes them on feedback).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from services.common.experiments import Arm, load_config
from starling.config import get_settings
from starling.errors import StarlingError
from starling.progress import progress

Z95 = 1.959964


def chosen_arms(
    experiment: str | None, arm_names: list[str] | None, config_path: Path | None = None
) -> tuple[str, list[Arm]]:
    """The arms to replay: an experiment's (default: the file's first), or arms named across the experiments
    file (first match each)."""
    config = load_config(config_path or get_settings().experiments)
    if not config.experiments:
        raise StarlingError(
            f"no experiments in {config.source}: define the arms to replay there (STARLING_EXPERIMENTS)"
        )
    if experiment is not None:
        found = config.by_name.get(experiment)
        if found is None:
            raise StarlingError(
                f"experiment {experiment!r} is not in {config.source} ({', '.join(config.by_name)})"
            )
        arms = list(found.arms)
        label = experiment
    else:
        label = config.experiments[0].name
        arms = list(config.experiments[0].arms)
    if arm_names:
        every = {arm.name: arm for e in config.experiments for arm in reversed(e.arms)}
        every.update({arm.name: arm for arm in arms})
        missing = [name for name in arm_names if name not in every]
        if missing:
            raise StarlingError(f"arm(s) {missing} not in {config.source}; known: {', '.join(sorted(every))}")
        arms = [every[name] for name in arm_names]
    return label, arms


def replay_arms(
    workdir: Path,
    experiment: str | None = None,
    arm_names: list[str] | None = None,
    k: int = 10,
    max_events: int = 2000,
    seed: int = 0,
    config_path: Path | None = None,
) -> dict[str, Any]:
    """Hit rate@k of each arm over the test period's likes (see the module docstring)."""
    from services.common.history import UserHistory
    from services.rerank.logic import load_rules
    from training.evaluate import load_inputs
    from training.replay import HistoryUntil, OfflinePipeline, Ranker, snapshot_as_of

    settings = get_settings()
    label, arms = chosen_arms(experiment, arm_names, config_path)
    inputs = load_inputs(Path(workdir))
    artifact = inputs.artifact
    snapshot = snapshot_as_of(
        inputs.ratings,
        inputs.movies,
        inputs.test_cutoff,
        artifact.recall_state.params,
        settings.like_threshold,
    )
    full_history = UserHistory.from_frame(inputs.ratings, settings.like_threshold)
    events = inputs.ratings.filter(
        (pl.col("event_timestamp") >= inputs.test_cutoff) & (pl.col("rating") >= settings.like_threshold)
    ).sort("event_timestamp", "user_id", "movie_id")
    if events.is_empty():
        raise StarlingError(f"{workdir}: nobody liked anything after the test cut-off {inputs.test_cutoff}")
    if events.height > max_events:
        keep = np.sort(np.random.default_rng(seed).choice(events.height, max_events, replace=False))
        events = events[keep]
    ranker = Ranker.build(artifact.model(), artifact.spec, snapshot)
    rules = load_rules(settings.rerank_rules) if settings.rerank_rules else load_rules()
    users = events["user_id"].to_numpy()
    movies = events["movie_id"].to_numpy()
    times_us = events["event_timestamp"].dt.epoch("us").to_numpy()
    hits = np.zeros((len(arms), events.height), dtype=bool)
    gains = np.zeros((len(arms), events.height))
    with progress("replay", total=events.height, unit="events") as step:
        for i in range(events.height):  # one request per event and arm, in time order: what replay is
            view = dataclasses.replace(snapshot, history=HistoryUntil(full_history, int(times_us[i])))
            pipeline = OfflinePipeline(view, ranker, rules, settings.recall_size)
            for a, arm in enumerate(arms):
                served = pipeline.recommend(int(users[i]), k, overrides=arm.overrides, request_id=f"{i:032x}")
                found = np.flatnonzero(served.movie_ids == movies[i])
                if len(found):
                    hits[a, i] = True
                    gains[a, i] = 1.0 / np.log2(found[0] + 2)
            step.update()
    per_arm: dict[str, Any] = {}
    for a, arm in enumerate(arms):
        rate = float(hits[a].mean())
        half = Z95 * float(np.sqrt(rate * (1 - rate) / len(users)))
        entry: dict[str, Any] = {
            "hit_rate": rate,
            "interval": [rate - half, rate + half],
            "ndcg": float(gains[a].mean()),
            "hits": int(hits[a].sum()),
        }
        if a:
            diff = hits[a].astype(float) - hits[0].astype(float)  # paired: the same events
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            entry["vs_first"] = {
                "difference": float(diff.mean()),
                "interval": [diff.mean() - Z95 * se, diff.mean() + Z95 * se],
            }
        per_arm[arm.name] = entry
    order = sorted(per_arm, key=lambda name: (-per_arm[name]["hit_rate"], -per_arm[name]["ndcg"]))
    return {
        "experiment": label,
        "k": k,
        "events": int(events.height),
        "users": len(np.unique(users)),
        "period_from": inputs.test_cutoff.isoformat(),
        "arms": per_arm,
        "order": order,
        "method": "paired over the same test-period likes; normal-approximation 95% intervals",
    }


def format_replay(result: dict[str, Any]) -> str:
    lines = [
        f"replay of {result['experiment']}: {result['events']:,} likes of {result['users']:,} users after "
        f"{result['period_from']}, hit rate@{result['k']} per arm (best first)",
    ]
    for name in result["order"]:
        entry = result["arms"][name]
        low, high = entry["interval"]
        line = f"  {name:<16} {entry['hit_rate']:.4f} [{low:.4f}, {high:.4f}]  ndcg {entry['ndcg']:.4f}"
        if "vs_first" in entry:
            d = entry["vs_first"]
            line += (
                f"  vs first arm {d['difference']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]"
            )
        lines.append(line)
    return "\n".join(lines)
