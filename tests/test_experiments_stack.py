"""Experiments on the running stack (ml-latest-small): assignment as computed offline, forced arms, the random
arm, team-draft interleaving, the exposure log, reload of the experiments file (a bad edit keeps the old
one), and that acknowledged exposures and feedback survive a `kill -9` of recommend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
import yaml

from services.common.experiments import INTERLEAVED, arm_indices, load_config
from starling.auth import authorized_channel, client_token
from starling.config import Settings
from starling.events import RATING_STREAM, read_all
from starling.exposures import read_exposures
from starling.local import read_state
from starling.v1 import common_pb2, recommend_pb2, recommend_pb2_grpc

pytestmark = pytest.mark.slow

CANDIDATE = "candidate-v2"

AB = {
    "name": "ranker-vs-random",
    "layer": "ranking",
    "salt": "test-1",
    "arms": [
        {"name": "model", "share": 50},
        {"name": "random", "share": 50, "overrides": {"ranker": "random"}},
    ],
}
INTERLEAVING = {
    "name": "rerank-on-off",
    "layer": "rerank",
    "salt": "test-2",
    "type": "interleaving",
    "arms": [
        {"name": "reranked", "share": 30},
        {"name": "plain", "share": 30, "overrides": {"rerank": False}},
    ],
}


@pytest.fixture(scope="module")
def stack(
    ml_small_trained: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, recommend_pb2_grpc.RecommendServiceStub, Path]]:
    from conftest import copy_workdir, running_stack

    workdir = copy_workdir(ml_small_trained, tmp_path_factory.mktemp("experiments"))
    # A second model version, not published: what an arm pins to test a candidate against the current model.
    published = (workdir / "models" / "current").resolve()
    candidate = workdir / "models" / CANDIDATE
    shutil.copytree(published, candidate)
    manifest = json.loads((candidate / "manifest.json").read_text())
    (candidate / "manifest.json").write_text(json.dumps({**manifest, "version": CANDIDATE}))
    config = workdir / "experiments.yaml"
    config.write_text(yaml.safe_dump({"experiments": [AB]}))
    with running_stack(workdir, experiments=config, experiments_poll_s=0.2) as settings:
        channel = authorized_channel(f"127.0.0.1:{settings.recommend_port}", client_token(settings))
        try:
            yield settings, recommend_pb2_grpc.RecommendServiceStub(channel), config
        finally:
            channel.close()


def _recommend(stub, user_id: int, k: int = 10, forced: dict[str, str] | None = None):
    context = common_pb2.RecommendContext(
        force_arms=[common_pb2.ExperimentArm(experiment=e, arm=a) for e, a in (forced or {}).items()]
    )
    return stub.Recommend(recommend_pb2.RecommendRequest(user_id=user_id, k=k, context=context), timeout=10)


def _arms(response) -> dict[str, str]:
    return {e.experiment: e.arm for e in response.experiments}


def test_users_get_the_arm_computed_offline_on_every_request(stack) -> None:
    _, stub, config_path = stack
    users = np.arange(1, 41)
    expected = arm_indices(load_config(config_path), "ranker-vs-random", users)
    names = [arm["name"] for arm in AB["arms"]]
    for user, arm in zip(users.tolist(), expected.tolist(), strict=True):
        answers = [_arms(_recommend(stub, user)) for _ in range(2)]
        assert answers[0] == answers[1] == {"ranker-vs-random": names[arm]}
    assert set(expected.tolist()) == {0, 1}


def test_the_random_arm_serves_another_order_and_forcing_is_checked(stack) -> None:
    _, stub, _ = stack
    model = _recommend(stub, 1, 20, {"ranker-vs-random": "model"})
    shuffled = _recommend(stub, 1, 20, {"ranker-vs-random": "random"})
    assert _arms(model) == {"ranker-vs-random": "model"} and _arms(shuffled) == {"ranker-vs-random": "random"}
    assert [i.movie_id for i in model.items] != [i.movie_id for i in shuffled.items]
    assert not model.degraded and not shuffled.degraded
    with pytest.raises(grpc.RpcError) as err:
        _recommend(stub, 1, 5, {"ranker-vs-random": "bogus"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.force_arms[0].arm 'bogus' is not one of model, random" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _recommend(stub, 1, 5, {"nope": "x"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not running" in err.value.details()


def test_exposures_are_logged_with_arms_and_items(stack) -> None:
    settings, stub, _ = stack
    response = _recommend(stub, 7, 10)
    logged = read_exposures(settings.workdir).filter(pl.col("request_id") == response.request_id)
    assert logged.height == 1
    row = logged.row(0, named=True)
    assert row["user_id"] == 7 and row["k"] == 10 and row["items"] == [i.movie_id for i in response.items]
    assert row["experiments"] == [{"experiment": e.experiment, "arm": e.arm} for e in response.experiments]


def test_reload_takes_a_new_file_and_keeps_the_old_one_on_a_bad_edit(stack) -> None:
    settings, stub, config_path = stack
    config_path.write_text(yaml.safe_dump({"experiments": [AB, INTERLEAVING]}))
    deadline = time.monotonic() + 10
    while True:
        try:
            _recommend(stub, 1, 10, {"rerank-on-off": INTERLEAVED})
            break
        except grpc.RpcError as err:  # "not running" until the file is re-read
            assert "is not running" in err.details() and time.monotonic() < deadline, err.details()
            time.sleep(0.2)
    interleaved = _recommend(stub, 1, 20, {"rerank-on-off": INTERLEAVED})
    assert {i.arm for i in interleaved.items} == {"reranked", "plain"}
    counts = [sum(i.arm == arm for i in interleaved.items) for arm in ("reranked", "plain")]
    assert abs(counts[0] - counts[1]) <= 1 and len({i.movie_id for i in interleaved.items}) == 20
    exposures = read_exposures(settings.workdir, "rerank-on-off")
    assert exposures.filter(pl.col("request_id") == interleaved.request_id).row(0, named=True)[
        "item_arms"
    ] == [i.arm for i in interleaved.items]

    config_path.write_text(yaml.safe_dump({"experiments": [AB, AB]}))  # duplicate names: rejected
    time.sleep(1.0)
    still = _recommend(stub, 1, 10, {"rerank-on-off": INTERLEAVED})
    assert "rerank-on-off" in _arms(still), "the previous configuration keeps serving"
    log = (settings.workdir / "run" / "logs" / "recommend.log").read_text()
    assert "experiments file rejected" in log and "duplicate experiment names" in log
    config_path.write_text(yaml.safe_dump({"experiments": [AB]}))


def test_an_arm_pins_a_model_version_that_the_ranker_loads_on_reload(stack) -> None:
    settings, stub, config_path = stack
    versions = {
        "name": "candidate-model",
        "layer": "model",
        "salt": "test-3",
        "arms": [
            {"name": "published", "share": 50},
            {"name": "candidate", "share": 50, "overrides": {"ranker_version": CANDIDATE}},
        ],
    }
    config_path.write_text(yaml.safe_dump({"experiments": [AB, versions]}))
    deadline = time.monotonic() + 60  # the ranker loads the version beside the published one
    while True:
        try:
            reply = _recommend(stub, 1, 10, {"candidate-model": "candidate"})
            if reply.model_version == CANDIDATE and not reply.degraded:
                break
        except grpc.RpcError as err:
            assert "is not running" in err.details(), err.details()
        assert time.monotonic() < deadline, "the candidate version was not served"
        time.sleep(0.3)
    published = _recommend(stub, 1, 10, {"candidate-model": "published"})
    assert published.model_version not in ("", CANDIDATE) and not published.degraded

    unknown = {
        **versions,
        "arms": [versions["arms"][0], {**versions["arms"][1], "overrides": {"ranker_version": "nope"}}],
    }
    config_path.write_text(yaml.safe_dump({"experiments": [AB, unknown]}))
    time.sleep(1.0)
    assert _recommend(stub, 1, 10, {"candidate-model": "candidate"}).model_version == CANDIDATE
    log = (settings.workdir / "run" / "logs" / "recommend.log").read_text()
    assert "unknown model version 'nope'" in log, "rejected; the previous experiments keep serving"
    config_path.write_text(yaml.safe_dump({"experiments": [AB]}))


def _counter(settings: Settings, name: str, **labels: str) -> float:
    """A counter's value on recommend's /metrics (0 when the label set is not there yet)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{settings.recommend_port + 1000}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total" and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_exposures_and_feedback_are_counted_by_experiment_and_arm(stack) -> None:
    settings, stub, config_path = stack
    users = np.arange(1, 41)
    model_user = int(users[arm_indices(load_config(config_path), "ranker-vs-random", users) == 0][0])
    arm = {"experiment": "ranker-vs-random", "arm": "random"}
    shown, liked = (
        _counter(settings, "starling_experiment_exposures", **arm),
        _counter(settings, "starling_experiment_feedback", **arm, signal="like"),
    )
    served = _recommend(stub, model_user, 5, {"ranker-vs-random": "random"})  # a "model" user, forced
    event = recommend_pb2.FeedbackEvent(
        user_id=model_user,
        movie_id=served.items[1].movie_id,
        kind=recommend_pb2.FEEDBACK_KIND_WATCH,
        request_id=served.request_id,
    )
    assert stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=[event]), timeout=10).accepted == 1
    assert _counter(settings, "starling_experiment_exposures", **arm) == shown + 1
    assert _counter(settings, "starling_experiment_feedback", **arm, signal="like") == liked + 1, (
        "the watch names the forced list: it counts for that list's arm, not the user's hashed arm"
    )


def test_acknowledged_exposures_and_feedback_survive_kill_9(stack) -> None:
    """Runs last: it kills recommend (the fixture's `down` cleans up)."""
    settings, stub, _ = stack
    served = [_recommend(stub, user, 5) for user in (3, 4, 5)]
    event = recommend_pb2.FeedbackEvent(
        user_id=3, movie_id=served[0].items[0].movie_id, kind=recommend_pb2.FEEDBACK_KIND_RATING, rating=4.5
    )
    assert stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=[event]), timeout=10).accepted == 1
    process = next(p for p in read_state(settings.workdir) if p.name == "recommend")
    os.kill(process.pid, signal.SIGKILL)
    ids = set(read_exposures(settings.workdir)["request_id"].to_list())
    assert {s.request_id for s in served} <= ids
    feedback = read_all(settings.workdir, RATING_STREAM)
    assert feedback.filter((pl.col("user_id") == 3) & (pl.col("movie_id") == event.movie_id)).height == 1
