"""Experiments without services: bucket hashing (stable, balanced), the config's validation and reload, the
serving plan, team-draft interleaving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import chisquare

from services.common.errors import InvalidArgument
from services.common.experiments import (
    BUCKETS,
    INTERLEAVED,
    ExperimentsConfigError,
    ExperimentsWatcher,
    arm_indices,
    assign,
    buckets,
    parse_config,
)
from services.recommend.experiments import RecentLists, checked_forced_arms, feedback_by_arm, serving_plan
from services.recommend.interleaving import team_draft
from services.recommend.logic import request_rng
from starling.v1 import common_pb2

AB = {
    "name": "ranker-vs-random",
    "layer": "ranking",
    "salt": "s1",
    "type": "ab",
    "arms": [
        {"name": "model", "share": 50},
        {"name": "random", "share": 50, "overrides": {"ranker": "random"}},
    ],
}
INTERLEAVING = {
    "name": "recall-size",
    "layer": "recall",
    "salt": "s2",
    "type": "interleaving",
    "arms": [
        {"name": "small", "share": 10, "overrides": {"recall_size": 100}},
        {"name": "large", "share": 10, "overrides": {"recall_size": 800, "recall_quotas": {"ease": 200}}},
    ],
}


def config_of(*experiments: dict):
    return parse_config({"experiments": list(experiments)}, "test.yaml")


def test_buckets_are_the_same_in_another_process_and_spread_evenly() -> None:
    users = np.arange(100_000)
    here = buckets("salt-a", users)
    code = (
        "import numpy as np; from services.common.experiments import buckets; "
        "print(','.join(map(str, buckets('salt-a', np.arange(0, 100_000, 997)))))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout.strip()
    assert there == ",".join(map(str, here[::997]))
    assert here.min() >= 0 and here.max() < BUCKETS
    counts = np.bincount(here // 100, minlength=100)  # 100 groups of 100 buckets
    assert chisquare(counts).pvalue > 0.001
    assert (buckets("salt-b", users) != here).mean() > 0.99, "another salt reshuffles users"


def test_arms_are_balanced_stable_and_layers_orthogonal() -> None:
    config = config_of(AB, INTERLEAVING)
    users = np.arange(1, 100_001)
    arms = arm_indices(config, "ranker-vs-random", users)
    counts = np.bincount(arms, minlength=2)
    assert (arms >= 0).all() and chisquare(counts).pvalue > 0.001, counts
    planted = np.where(np.random.default_rng(0).random(len(users)) < 0.45, 0, 1)  # a 45/55 split
    assert chisquare(np.bincount(planted)).pvalue < 1e-6, "a sample-ratio mismatch is flagged"
    # the same user gets the same arm on every request; the other layer's assignment is independent of it
    for user in (1, 77, 99_999):
        assert len({tuple((e.name, a and a.name) for e, a in assign(config, user)) for _ in range(5)}) == 1
    interleaved = arm_indices(config, "recall-size", users) >= 0
    assert abs(interleaved.mean() - 0.2) < 0.01
    assert abs(interleaved[arms == 0].mean() - interleaved[arms == 1].mean()) < 0.01, "layers are orthogonal"


def test_experiments_in_one_layer_never_share_a_user() -> None:
    second = {
        **AB,
        "name": "other",
        "salt": "s3",
        "arms": [{"name": "a", "share": 20}, {"name": "b", "share": 20}],
    }
    first = {**AB, "arms": [{"name": "model", "share": 30}, {"name": "random", "share": 30}]}
    config = config_of(first, second)
    users = np.arange(1, 50_001)
    in_first, in_second = (
        arm_indices(config, "ranker-vs-random", users) >= 0,
        arm_indices(config, "other", users) >= 0,
    )
    assert not (in_first & in_second).any()
    assert abs(in_first.mean() - 0.6) < 0.01 and abs(in_second.mean() - 0.4) < 0.01


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["experiments"][0]["arms"][0].update(share=70), "shares add up to 120% (at most 100%)"),
        (lambda c: c["experiments"].append(dict(AB)), "duplicate experiment names ['ranker-vs-random']"),
        (lambda c: c["experiments"][0]["arms"][1]["overrides"].update(beam=3), "unknown knob(s) ['beam']"),
        (
            lambda c: c["experiments"][0]["arms"][1]["overrides"].update(ranker="v2"),
            ".ranker: 'v2' must be one of",
        ),
        (lambda c: c["experiments"][0]["arms"][1].update(name="model"), "duplicate arm names ['model']"),
        (
            lambda c: c["experiments"][0].update(type="bandit"),
            ".type: 'bandit' must be one of ab, interleaving",
        ),
        (lambda c: c["experiments"][0]["arms"].pop(), "must be a list of at least two arms"),
        (
            lambda c: c["experiments"][0].pop("salt"),
            "experiments[0] (ranker-vs-random).salt: must be a non-empty",
        ),
        (
            lambda c: c["experiments"][0]["arms"][1]["overrides"].update(recall_quotas={"vibes": 3}),
            "recall_quotas: unknown channel(s) ['vibes']",
        ),
        (
            lambda c: c["experiments"][1]["arms"][0]["overrides"].update(ranker="random"),
            "knob 'ranker' is overridden in layers 'ranking' and 'recall'",
        ),
        (
            lambda c: c["experiments"][1]["arms"].append({"name": "third", "share": 5}),
            "exactly two arms, got 3",
        ),
    ],
)
def test_each_kind_of_bad_config_is_rejected_naming_the_field(change, message: str) -> None:
    import copy

    raw = {"experiments": [copy.deepcopy(AB), copy.deepcopy(INTERLEAVING)]}
    change(raw)
    with pytest.raises(ExperimentsConfigError) as err:
        parse_config(raw, "experiments.yaml")
    assert message in str(err.value) and str(err.value).startswith("experiments.yaml: ")


def test_a_bad_edit_keeps_the_previous_config_serving(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": [AB]}))
    watcher = ExperimentsWatcher(path)
    assert [e.name for e in watcher.config.experiments] == ["ranker-vs-random"]
    path.write_text(yaml.safe_dump({"experiments": [AB, AB]}))
    assert watcher.poll() is False and "duplicate experiment names" in watcher.last_error
    assert [e.name for e in watcher.config.experiments] == ["ranker-vs-random"]
    path.write_text(yaml.safe_dump({"experiments": [AB, INTERLEAVING]}) + "\n")
    assert watcher.poll() is True and watcher.last_error is None
    assert [e.name for e in watcher.config.experiments] == ["ranker-vs-random", "recall-size"]
    path.unlink()
    assert watcher.poll() is True and watcher.config.experiments == ()


def test_serving_plan_and_forced_arms() -> None:
    config = config_of(AB, INTERLEAVING)
    forced = checked_forced_arms(
        [common_pb2.ExperimentArm(experiment="ranker-vs-random", arm="random"),
         common_pb2.ExperimentArm(experiment="recall-size", arm=INTERLEAVED)],
        config,
    )  # fmt: skip
    plan = serving_plan(assign(config, 1, forced))
    assert plan.reported == [("ranker-vs-random", "random"), ("recall-size", INTERLEAVED)]
    assert plan.interleaving == ("recall-size", ("small", "large"))
    assert [(o.ranker, o.recall_size, o.recall_quotas) for o in plan.arm_overrides] == [
        ("random", 100, None),
        ("random", 800, {"ease": 200}),
    ]
    for bad, message in [
        (
            common_pb2.ExperimentArm(experiment="nope", arm="x"),
            "'nope' is not running (running: ranker-vs-random",
        ),
        (
            common_pb2.ExperimentArm(experiment="ranker-vs-random", arm="x"),
            "arm 'x' is not one of model, random",
        ),
        (common_pb2.ExperimentArm(experiment="recall-size", arm="small"), "is not one of interleaved"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            checked_forced_arms([bad], config)
        assert str(err.value).startswith("context.force_arms[0]") and message in str(err.value)
    assert serving_plan([]).arm_overrides[0].knobs() == set()


def _feedback(rows: list[tuple[int, int, str, float, str | None]]):
    """rows: (user_id, movie_id, kind, rating, request_id), as the ratings stream holds them."""
    import polars as pl

    user, movie, kind, rating, request = zip(*rows, strict=True)
    return pl.DataFrame(
        {"user_id": user, "movie_id": movie, "kind": kind, "rating": rating, "request_id": request},
        schema={
            "user_id": pl.Int64,
            "movie_id": pl.Int64,
            "kind": pl.String,
            "rating": pl.Float32,
            "request_id": pl.String,
        },
    )


def test_feedback_is_counted_under_the_arm_that_served_it() -> None:
    config = config_of(AB, INTERLEAVING)
    users = np.arange(1, 5000)
    ab_arm = arm_indices(config, "ranker-vs-random", users)
    interleaved = users[arm_indices(config, "recall-size", users) >= 0]
    model_user, random_user = int(users[ab_arm == 0][0]), int(users[ab_arm == 1][0])
    both = int(np.intersect1d(interleaved, users[ab_arm == 0])[0])  # in both layers
    outside = int(np.setdiff1d(users, interleaved)[0])
    recent = RecentLists(capacity=2)
    recent.add(
        "r-old", both, [("recall-size", INTERLEAVED)], np.array([5]), np.array(["small"], dtype=object)
    )
    recent.add(
        "r1",
        both,
        [("ranker-vs-random", "model"), ("recall-size", INTERLEAVED)],
        np.array([10, 11, 12]),
        np.array(["small", "large", "small"], dtype=object),
    )
    recent.add(
        "r2", random_user, [("ranker-vs-random", "model")], np.array([20]), np.array([""], dtype=object)
    )
    assert recent.served(["r-old"]).is_empty(), "the oldest list leaves a full memory"
    events = _feedback(
        [
            (both, 11, "rating", 4.5, "r1"),  # contributed by "large": a like and a rating for it
            (both, 10, "watch", float("nan"), "r1"),  # "small": a like, not a rating
            (both, 99, "click", float("nan"), "r1"),  # not in r1: the user's interleaving arm
            (random_user, 20, "rating", 2.0, "r2"),  # a forced list: the list's arm (model), not the hash's
            (model_user, 7, "rating", 5.0, None),  # no request id: the assigned arm
            (model_user, 8, "rating", 4.0, "someone-else"),  # unknown request: the assigned arm
        ]
    )
    counts = {(e, a, s): n for e, a, s, n in feedback_by_arm(config, events, recent, 3.5).iter_rows()}
    assert counts[("recall-size", "large", "like")] == 1 and counts[("recall-size", "large", "rating")] == 1
    assert counts[("recall-size", "small", "like")] == 1 and ("recall-size", "small", "rating") not in counts
    assert counts[("recall-size", INTERLEAVED, "click")] == 1
    assert (
        counts[("ranker-vs-random", "model", "rating")] == 2 + 1 + 1
    )  # both (r1), random_user (r2), model_user x2
    assert counts[("ranker-vs-random", "model", "like")] == 2 + 2
    assert ("ranker-vs-random", "random", "rating") not in counts
    assert feedback_by_arm(config_of(), events, recent, 3.5).is_empty()
    click = _feedback([(outside, 1, "click", float("nan"), None)])
    assert feedback_by_arm(config_of(INTERLEAVING), click, RecentLists(), 3.5).is_empty(), (
        "not in the experiment"
    )


def test_team_draft_interleaving() -> None:
    a, b = np.array([1, 2, 3, 4, 5, 6]), np.array([4, 3, 7, 8, 1, 9])
    for seed in range(20):
        ids, teams = team_draft(a, b, 6, np.random.default_rng(seed))
        assert len(set(ids.tolist())) == 6 and abs(int((teams == 0).sum()) - int((teams == 1).sum())) <= 1
        # every arm's picks keep that arm's order, and each pick was the arm's best item not yet shown
        for team, source in ((0, a), (1, b)):
            picked = ids[teams == team]
            positions = [int(np.flatnonzero(source == m)[0]) for m in picked]
            assert positions == sorted(positions)
        for i in range(len(ids)):
            source = a if teams[i] == 0 else b
            best = next(int(m) for m in source if int(m) not in set(ids[:i].tolist()))
            assert ids[i] == best
    same = [team_draft(a, b, 4, request_rng("ab" * 16))[1].tolist() for _ in range(3)]
    assert same[0] == same[1] == same[2], "a request interleaves the same way every time"
    ids, teams = team_draft(np.array([1, 2]), np.array([1, 2, 3, 4]), 4, np.random.default_rng(0))
    assert sorted(ids.tolist()) == [1, 2, 3, 4], "when one arm runs out the other fills the list"


def test_degradations_are_listed_once_each_in_pipeline_order() -> None:
    """Two arms may fall back alike, and candidates and recall fail in whichever order their calls end."""
    from services.recommend.logic import unique_degradations

    def entry(stage: str, reason: str = "down") -> common_pb2.Degradation:
        return common_pb2.Degradation(stage=stage, reason=reason)

    degraded = [entry("rerank"), entry("recall"), entry("ranker"), entry("recall"), entry("candidates")]
    degraded += [entry("features"), entry("recall", "other")]
    assert [(d.stage, d.reason) for d in unique_degradations(degraded)] == [
        ("candidates", "down"),
        ("recall", "down"),
        ("recall", "other"),
        ("features", "down"),
        ("ranker", "down"),
        ("rerank", "down"),
    ]


def test_exposure_log_rotates_stays_bounded_and_skips_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    from starling.exposures import ExposureLog, exposure_dir, read_exposures, segments

    log = ExposureLog(exposure_dir(tmp_path), max_segment_bytes=400, max_segments=3)
    for i in range(40):
        log.append(
            {
                "request_id": f"{i:032x}",
                "time_us": 1_764_547_200_000_000 + i,
                "user_id": i % 5,
                "k": 2,
                "model_version": "v1",
                "experiments": [{"experiment": "ab", "arm": "a" if i % 2 else "b"}] if i % 4 else [],
                "items": [1, 2],
                "item_arms": ["", ""],
            }
        )
    files = segments(exposure_dir(tmp_path))
    assert len(files) == 3, "rotated, and only the newest files are kept"
    with files[-1].open("ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"request_id": "cut sh')
    frame = read_exposures(tmp_path)
    assert frame["request_id"].to_list() == sorted(frame["request_id"].to_list())
    assert frame["request_id"].to_list()[-1] == f"{39:032x}" and frame.height < 40
    assert read_exposures(tmp_path, "ab")["experiments"].list.len().min() == 1

    (tmp_path / "not-a-dir").write_text("")
    broken = ExposureLog(tmp_path / "not-a-dir" / "exposures")
    with pytest.raises(OSError):  # recommend counts this and serves the list anyway
        broken.append({"request_id": "x"})
