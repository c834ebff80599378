"""How one Recommend request is served under the running experiments (services/common/experiments.py holds
the configuration, the assignment and the watcher): the arms a request may force, and the serving plan."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from services.common.errors import InvalidArgument
from services.common.experiments import (
    INTERLEAVED,
    Arm,
    Experiment,
    ExperimentsConfig,
    Overrides,
    arm_indices,
)


def checked_forced_arms(force_arms: Sequence[Any], config: ExperimentsConfig) -> dict[str, str]:
    """``context.force_arms`` as {experiment: arm}; InvalidArgument names an unknown experiment or arm."""
    forced: dict[str, str] = {}
    experiments = config.by_name
    for i, entry in enumerate(force_arms):
        where = f"context.force_arms[{i}]"
        experiment = experiments.get(entry.experiment)
        if experiment is None:
            running = ", ".join(experiments) or "none"
            raise InvalidArgument(
                f"{where}.experiment {entry.experiment!r} is not running (running: {running})"
            )
        allowed = [INTERLEAVED] if experiment.kind == "interleaving" else experiment.arm_names
        if entry.arm not in allowed:
            raise InvalidArgument(f"{where}.arm {entry.arm!r} is not one of {', '.join(allowed)}")
        if entry.experiment in forced:
            raise InvalidArgument(f"{where}: experiment {entry.experiment!r} is forced twice")
        forced[entry.experiment] = entry.arm
    return forced


@dataclass(frozen=True)
class ServingPlan:
    """How one request is served: the knobs of each list to build (one, or the two arms of an interleaving
    experiment), which interleaving experiment that is, and the (experiment, arm) pairs the response reports."""

    arm_overrides: list[Overrides]
    interleaving: tuple[str, tuple[str, str]] | None
    reported: list[tuple[str, str]]


def serving_plan(assignments: Sequence[tuple[Experiment, Arm | None]]) -> ServingPlan:
    """Merge the assigned arms' knobs (layers own distinct knobs); the first interleaving experiment the user
    is in interleaves its two arms on top of them (a second one, in another layer, is not applied)."""
    base = Overrides()
    reported: list[tuple[str, str]] = []
    interleaving: Experiment | None = None
    for experiment, arm in assignments:
        if arm is None:
            if interleaving is None:
                interleaving = experiment
                reported.append((experiment.name, INTERLEAVED))
            continue
        base = base.merged(arm.overrides)
        reported.append((experiment.name, arm.name))
    if interleaving is None:
        return ServingPlan([base], None, reported)
    first, second = interleaving.arms
    return ServingPlan(
        [base.merged(first.overrides), base.merged(second.overrides)],
        (interleaving.name, (first.name, second.name)),
        reported,
    )


class RecentLists:
    """The last ``capacity`` lists this process served to users in an experiment (request id → user, arms,
    items and their contributing arms), so that feedback naming its request_id is counted under the arm that
    served it. Bounded; thread-safe (Recommend adds, RecordFeedback's worker thread reads)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._lists: OrderedDict[str, tuple[int, list[tuple[str, str]], list[int], list[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(
        self,
        request_id: str,
        user_id: int,
        experiments: list[tuple[str, str]],
        movie_ids: np.ndarray,
        item_arms: np.ndarray,
    ) -> None:
        if not experiments:
            return
        with self._lock:
            self._lists[request_id] = (user_id, experiments, movie_ids.tolist(), item_arms.tolist())
            while len(self._lists) > self.capacity:
                self._lists.popitem(last=False)

    def served(self, request_ids: Sequence[str]) -> pl.DataFrame:
        """One row per (request, experiment, item) of the known ``request_ids``: request_id, user_id,
        experiment, list_arm, movie_id, item_arm."""
        with self._lock:
            found = [(r, self._lists[r]) for r in request_ids if r in self._lists]
        frame = pl.DataFrame(
            {
                "request_id": [r for r, _ in found],
                "user_id": [entry[0] for _, entry in found],
                "experiments": [
                    [{"experiment": e, "list_arm": a} for e, a in entry[1]] for _, entry in found
                ],
                "movie_id": [entry[2] for _, entry in found],
                "item_arm": [entry[3] for _, entry in found],
            },
            schema={
                "request_id": pl.String,
                "user_id": pl.Int64,
                "experiments": pl.List(pl.Struct({"experiment": pl.String, "list_arm": pl.String})),
                "movie_id": pl.List(pl.Int64),
                "item_arm": pl.List(pl.String),
            },
        )
        return frame.explode("experiments").unnest("experiments").explode(["movie_id", "item_arm"])


def feedback_by_arm(
    config: ExperimentsConfig, events: pl.DataFrame, recent: RecentLists, like_threshold: float
) -> pl.DataFrame:
    """Accepted feedback ``events`` (the ratings stream's columns) counted per experiment, arm and signal (like:
    a rating of ``like_threshold`` or more, or a watch; rating; click), under the arm of the served list the
    event names by request_id when ``recent`` holds it (for an interleaving list, the arm that contributed the
    movie), else the user's assigned arm. Users in no experiment are not counted. Columns: experiment, arm,
    signal, events."""
    rated = pl.col("kind") == "rating"
    signals = events.select(
        "user_id",
        "movie_id",
        pl.col("request_id").fill_null(""),
        like=(rated & (pl.col("rating") >= like_threshold)) | (pl.col("kind") == "watch"),
        rating=rated,
        click=pl.col("kind") == "click",
    )
    request_ids = [r for r in signals["request_id"].unique().to_list() if r]
    served = recent.served(request_ids)
    lists = served.select("request_id", "user_id", "experiment", "list_arm").unique()
    items = served.filter((pl.col("list_arm") == INTERLEAVED) & (pl.col("item_arm") != "")).select(
        "request_id", "experiment", "movie_id", "item_arm"
    )
    user_ids = signals["user_id"].to_numpy()
    parts = []
    for experiment in config.experiments:  # a handful: one vectorized assignment each
        index = arm_indices(config, experiment.name, user_ids)
        names = (
            [INTERLEAVED] * len(experiment.arms)
            if experiment.kind == "interleaving"
            else experiment.arm_names
        )
        assigned = np.where(index >= 0, np.array([*names, ""], dtype=object)[index], "")
        parts.append(
            signals.with_columns(
                experiment=pl.lit(experiment.name), assigned=pl.Series(assigned, dtype=pl.String)
            )
            .join(lists, on=["request_id", "user_id", "experiment"], how="left")
            .join(items, on=["request_id", "experiment", "movie_id"], how="left")
            .with_columns(
                arm=pl.coalesce(pl.col("item_arm"), pl.col("list_arm"), pl.col("assigned").replace("", None))
            )
            .drop_nulls("arm")
        )
    schema = {"experiment": pl.String, "arm": pl.String, "signal": pl.String, "events": pl.Int64}
    if not parts:
        return pl.DataFrame(schema=schema)
    return (
        pl.concat(parts)
        .unpivot(["like", "rating", "click"], index=["experiment", "arm"], variable_name="signal")
        .group_by("experiment", "arm", "signal")
        .agg(events=pl.col("value").sum().cast(pl.Int64))
        .filter(pl.col("events") > 0)
        .sort("experiment", "arm", "signal")
        .select(list(schema))
    )
