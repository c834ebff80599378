"""How one Recommend request is served under the running experiments (services/common/experiments.py holds
the configuration, the assignment and the watcher): the arms a request may force, and the serving plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.common.experiments import (
    INTERLEAVED,
    Arm,
    Experiment,
    ExperimentsConfig,
    Overrides,
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
