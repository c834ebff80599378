"""The KServe ranker: the serving encoder equals the one transform, and a real ModelServer process answers
Open Inference Protocol v2 over gRPC and REST with what the offline replay computes, rejects bad input, and
hot-reloads a newly published model."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import torch
from kserve import InferenceGRPCClient, InferInput, InferRequest

from services.ranker.encoding import ServingEncoder, blank_user, user_columns
from starling.config import REPO_ROOT
from starling.features.spec import CANDIDATE_FEATURES, USER_FEATURE_COLUMNS, FeatureSpec
from starling.features.transform import transform

MODEL = "starling-ranker"


def _joined(features: Path, user_id: int, movie_ids: np.ndarray) -> pl.DataFrame:
    users = pl.read_parquet(features / "user_features.parquet").drop("event_timestamp")
    movies = pl.read_parquet(features / "movie_features.parquet").drop("event_timestamp")
    chosen = pl.DataFrame({"movie_id": movie_ids}).join(
        movies, on="movie_id", how="left", maintain_order="left"
    )
    return chosen.join(users.filter(pl.col("user_id") == user_id), how="cross")


def test_serving_encoder_equals_transform_of_joined_rows(ml_small_features: Path) -> None:
    features = ml_small_features / "features"
    rng = np.random.default_rng(0)
    fitted_on = pl.DataFrame(
        rng.normal(size=(100, len(CANDIDATE_FEATURES))), schema=list(CANDIDATE_FEATURES), orient="row"
    )
    spec = FeatureSpec.load(features / "feature_spec.json").with_candidate_stats(fitted_on)
    encoder = ServingEncoder(spec, pl.read_parquet(features / "movie_features.parquet"))
    movie_ids = np.array([1, 356, 2571, 318, 999999, 260])  # 999999: not in the catalog
    candidates = rng.normal(size=(len(movie_ids), len(CANDIDATE_FEATURES))).astype(np.float32)
    candidates[1, 3] = np.nan  # a missing candidate feature
    user_row = pl.read_parquet(features / "user_features.parquet").filter(pl.col("user_id") == 1)
    joined = _joined(features, 1, movie_ids).with_columns(
        pl.Series(name, candidates[:, i].astype(np.float64)).fill_nan(None)
        for i, name in enumerate(CANDIDATE_FEATURES)
    )
    expected = transform(joined, spec)
    got = encoder.encode(
        user_columns(1, user_row.select(USER_FEATURE_COLUMNS).to_dicts()[0]), movie_ids, candidates
    )
    for key in expected:
        if key != "label":
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert got["numeric_missing"][1, 9 + 3] == 1.0
    unknown = encoder.encode(blank_user(424242), movie_ids[:2], candidates[:2])
    assert (unknown["user"] == 0).all() and (unknown["numeric_missing"][:, 4:9] == 1).all()
    with pytest.raises(ValueError, match="candidate_features must be"):
        encoder.encode(blank_user(1), movie_ids, candidates[:2])

    # A model that reads a few keys (RankMLP) gets exactly those, equal to the full encoding's, and the same
    # scores as from the full batch.
    from services.ranker.scoring import score_encoded
    from training.models.base import FEATURE_KEYS, ModelConfig, model_inputs
    from training.models.rank_mlp import RankMLP

    model = RankMLP(spec, ModelConfig(hidden_units=(16,), ensemble=2)).eval()
    user = user_columns(1, user_row.select(USER_FEATURE_COLUMNS).to_dicts()[0])
    few = encoder.encode(user, movie_ids, candidates, keys=model_inputs(model))
    assert set(few) == {"numeric", "numeric_missing"} == set(model_inputs(model)) < set(FEATURE_KEYS)
    for key in few:
        np.testing.assert_array_equal(few[key], got[key], err_msg=key)
    np.testing.assert_array_equal(
        score_encoded(model, few, torch.device("cpu")), score_encoded(model, got, torch.device("cpu"))
    )


def _start_ranker(workdir: Path, grpc_port: int, http_port: int, log: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        STARLING_WORKDIR=str(workdir),
        STARLING_RANKER_GRPC_PORT=str(grpc_port),
        STARLING_RANKER_HTTP_PORT=str(http_port),
        STARLING_RANKER_REFRESH_S="0.5",
        STARLING_RANKER_BATCHING="on",  # auto batches on CUDA only
    )
    return subprocess.Popen(
        [sys.executable, "-m", "services.ranker.server"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _request(user_id: int, movie_ids: np.ndarray, features: np.ndarray | None) -> InferRequest:
    user = InferInput("user_id", [1], "INT64")
    user.set_data_from_numpy(np.array([user_id], dtype=np.int64), binary_data=True)
    movies = InferInput("movie_ids", [len(movie_ids)], "INT64")
    movies.set_data_from_numpy(movie_ids.astype(np.int64), binary_data=True)
    inputs = [user, movies]
    if features is not None:
        candidate = InferInput("candidate_features", list(features.shape), "FP32")
        candidate.set_data_from_numpy(features.astype(np.float32), binary_data=True)
        inputs.append(candidate)
    return InferRequest(model_name=MODEL, infer_inputs=inputs)


def _check_batching_and_user_cache(
    workdir: Path, grpc_port: int, http_port: int, snapshot, artifact, movie_ids, features
) -> None:
    """Requests sent together are scored in shared forward passes, each answered with its own scores; a user
    whose online features were pushed after a rating is read again once the rating is in the event log."""
    import datetime as dt

    from starling import events
    from starling.featurestore import USER_PUSH_SOURCE, get_feature_store
    from training.replay import Ranker

    ranker = Ranker.build(artifact.model(), artifact.spec, snapshot)
    users = list(range(1, 25))
    expected = [ranker.score(u, snapshot.users.values(u)[0], movie_ids, features) for u in users]

    async def together() -> list[np.ndarray]:
        async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
            replies = await asyncio.gather(*(client.infer(_request(u, movie_ids, features)) for u in users))
        return [next(o for o in r.outputs if o.name == "scores").as_numpy() for r in replies]

    def requests_and_passes() -> tuple[float, float]:
        metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
        requests = float(re.search(r"^starling_ranker_batch_requests_sum (\S+)$", metrics, re.M).group(1))
        passes = float(re.search(r"^starling_ranker_batch_requests_count (\S+)$", metrics, re.M).group(1))
        return requests, passes

    # Whether a request arrives during another's pass is up to the scheduler: a few rounds, and at least one
    # pass must have been shared (every answer is checked in every round).
    before = requests_and_passes()
    for _ in range(5):
        for got, want in zip(asyncio.run(together()), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        requests, passes = (after - start for after, start in zip(requests_and_passes(), before, strict=True))
        if requests > passes:
            break
    assert requests > passes, f"{requests:.0f} requests in {passes:.0f} passes: none shared a pass"

    # User 2 rates: recommend pushes their recomputed features, after appending the rating to the event log.
    values, _ = snapshot.users.values(2)
    changed = {**values, "user_rating_count": 2000.0, "user_avg_rating": 1.0, "user_rating_stddev": 0.1}
    now = dt.datetime.now(dt.UTC)
    row = {"user_id": [2], **{name: [value] for name, value in changed.items()}, "event_timestamp": [now]}
    get_feature_store(workdir).push(USER_PUSH_SOURCE, pl.DataFrame(row).to_pandas())
    rating = {"user_id": [2], "movie_id": [int(movie_ids[0])], "rating": [1.0], "event_timestamp": [now]}
    events.append(workdir, events.RATING_STREAM, pl.DataFrame({**rating, "kind": ["rating"]}))
    fresh = ranker.score(2, changed, movie_ids, features)
    assert not np.allclose(fresh, expected[1], rtol=1e-5, atol=1e-6)

    async def scores_of_user_2() -> np.ndarray:
        async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
            reply = await client.infer(_request(2, movie_ids, features))
        return next(o for o in reply.outputs if o.name == "scores").as_numpy()

    deadline = time.monotonic() + 10
    while not np.allclose(got := asyncio.run(scores_of_user_2()), fresh, rtol=1e-5, atol=1e-6):
        assert time.monotonic() < deadline, "the ranker kept serving user 2's cached features"
        time.sleep(0.1)


def _check_hardening(pid: int, grpc_port: int, http_port: int) -> None:
    """Loopback only; the model repository cannot unload the model; malformed tensors are INVALID_ARGUMENT."""
    import grpc
    import psutil
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as v2
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as v2_grpc

    listening = {c.laddr for c in psutil.Process(pid).connections() if c.status == psutil.CONN_LISTEN}
    assert {port for _, port in listening} >= {grpc_port, http_port}
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in listening), listening

    unload = httpx.post(f"http://127.0.0.1:{http_port}/v2/repository/models/{MODEL}/unload", timeout=10)
    assert unload.status_code == 501 and "model repository control is disabled" in unload.text
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name=MODEL), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        tensor = v2.ModelInferRequest.InferInputTensor
        short = v2.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                tensor(name="user_id", datatype="INT64", shape=[1], contents=v2.InferTensorContents(int64_contents=[1])),
                tensor(name="movie_ids", datatype="INT64", shape=[4], contents=v2.InferTensorContents(int64_contents=[1, 2])),
            ],
        )  # fmt: skip
        with pytest.raises(grpc.RpcError) as bad_shape:
            stub.ModelInfer(short, timeout=10)
        assert bad_shape.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not match shape [4]" in bad_shape.value.details()
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xff\xff\xff\x0f", timeout=10)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ready = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=10)
    assert ready.status_code == 200, "the model is still loaded and serving"


def _check_metadata_and_reflection(grpc_port: int, http_port: int) -> None:
    """What a generic v2 client (and grpcurl) learns without reading the code."""
    import asyncio

    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as v2
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
    from test_service_common import reflection_v1

    expected_inputs = [
        ("user_id", "INT64", [1]),
        ("movie_ids", "INT64", [-1]),
        ("candidate_features", "FP32", [-1, len(CANDIDATE_FEATURES)]),
    ]
    expected_outputs = [("scores", "FP32", [-1]), ("user_features_found", "BOOL", [1])]
    rest = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}", timeout=10).json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in rest["inputs"]] == expected_inputs
    assert [(o["name"], o["datatype"], o["shape"]) for o in rest["outputs"]] == expected_outputs
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        metadata = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            v2.ModelMetadataRequest(name=MODEL), timeout=10
        )
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == expected_inputs
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == expected_outputs

    async def listed() -> set[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            return await reflection_v1(channel, "inference.GRPCInferenceService")

    assert "inference.GRPCInferenceService" in asyncio.run(listed())


@pytest.mark.slow
def test_kserve_ranker_v2_grpc_rest_bad_input_and_hot_reload(
    ml_small_trained: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    from conftest import copy_workdir, fast_windows

    from services.rerank.logic import load_rules
    from starling.config import get_settings
    from starling.content import artifact_content
    from training.artifacts import load_artifact, resolve_artifact
    from training.replay import OfflinePipeline, Ranker, served_snapshot
    from training.train import train_command

    workdir = copy_workdir(ml_small_trained, tmp_path / "workdir")  # this test publishes a new version
    grpc_port, http_port = free_port(), free_port()
    process = _start_ranker(workdir, grpc_port, http_port, tmp_path / "ranker.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "ranker.log").read_text()[-3000:]
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=1).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("ranker not ready in 120 s:\n" + (tmp_path / "ranker.log").read_text()[-3000:])

        artifact = load_artifact(resolve_artifact(workdir))
        snapshot = served_snapshot(
            workdir,
            artifact.recall_state,
            get_settings().like_threshold,
            artifact_content(artifact.path, artifact.manifest),
        )
        recalled, _ = OfflinePipeline(snapshot, None, load_rules()).recall_for(1)
        movie_ids = snapshot.recall.movie_ids[recalled.rows]
        features = recalled.features
        expected = Ranker.build(artifact.model(), artifact.spec, snapshot).score(
            1, snapshot.users.values(1)[0], movie_ids, features
        )

        async def grpc_calls() -> None:
            async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
                response = await client.infer(_request(1, movie_ids, features))
                outputs = {o.name: o.as_numpy() for o in response.outputs}
                np.testing.assert_allclose(outputs["scores"], expected, rtol=1e-5, atol=1e-6)
                assert outputs["user_features_found"].tolist() == [True]
                assert response.model_version == artifact.version
                cold = await client.infer(_request(987654, movie_ids[:3], features[:3]))
                assert {o.name: o.as_numpy() for o in cold.outputs}["user_features_found"].tolist() == [False]
                bad_requests = (
                    (_request(-1, movie_ids[:3], features[:3]), "ids must be"),
                    (_request(1, np.array([], dtype=np.int64), features[:0]), "movie_ids must hold"),
                    (_request(1, movie_ids[:3], None), "missing input candidate_features"),
                    (_request(1, movie_ids[:3], features[:2]), r"candidate_features must be \[3, "),
                    (_request(1, movie_ids[:1], np.full((1, len(CANDIDATE_FEATURES)), np.inf)), "finite"),
                )
                for bad, message in bad_requests:
                    with pytest.raises(Exception, match=message):
                        await client.infer(bad)

        asyncio.run(grpc_calls())
        _check_batching_and_user_cache(workdir, grpc_port, http_port, snapshot, artifact, movie_ids, features)

        rest = httpx.post(
            f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]},
                    {"name": "movie_ids", "shape": [3], "datatype": "INT64", "data": movie_ids[:3].tolist()},
                    {
                        "name": "candidate_features",
                        "shape": [3, len(CANDIDATE_FEATURES)],
                        "datatype": "FP32",
                        "data": np.nan_to_num(features[:3], nan=0.0).ravel().tolist(),
                    },
                ]
            },
            timeout=10,
        )
        assert rest.status_code == 200, rest.text
        scores = next(o for o in rest.json()["outputs"] if o["name"] == "scores")["data"]
        reference = Ranker.build(artifact.model(), artifact.spec, snapshot).score(
            1, snapshot.users.values(1)[0], movie_ids[:3], np.nan_to_num(features[:3], nan=0.0)
        )
        np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)
        missing = httpx.post(
            f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]},
        )
        assert missing.status_code == 400 and "movie_ids" in missing.text
        mismatched = httpx.post(
            f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]},
                    {"name": "movie_ids", "shape": [5], "datatype": "INT64", "data": [1, 2, 3]},
                ]
            },
        )
        assert mismatched.status_code == 400 and "does not match shape [5]" in mismatched.text
        _check_hardening(process.pid, grpc_port, http_port)
        _check_metadata_and_reflection(grpc_port, http_port)

        # Hot reload: publish a new version while requests keep flowing; none fails, the version changes.
        new = train_command(workdir, "rank_mlp", epochs=1, publish=True, windows=fast_windows())

        async def during_reload() -> set[str]:
            versions: set[str] = set()
            async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
                deadline = time.monotonic() + 60
                while new.version not in versions and time.monotonic() < deadline:
                    response = await client.infer(_request(1, movie_ids, features))
                    versions.add(response.model_version)
            return versions

        versions = asyncio.run(during_reload())
        assert new.version in versions, f"ranker never served {new.version}: {versions}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_bench_ranker_drives_three_ranker_processes_and_reports_their_ratios(
    ml_small_trained: Path, tmp_path: Path
) -> None:
    from conftest import copy_workdir

    from services.bench import RANKER_CONFIGS, bench_ranker

    workdir = copy_workdir(ml_small_trained, tmp_path / "workdir")
    report = bench_ranker(workdir, [1, 4], rounds=1, burst_s=0.4, candidates=100)
    assert report["candidates"] == 100 and [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        for name in RANKER_CONFIGS:
            figures = level[name]
            assert figures["requests"] > 0 and figures["errors"] == 0, (name, figures)
            assert figures["cpu_ms_per_request"] > 0 and figures["p50_ms"] <= figures["p99_ms"]
        assert level["batching"]["over_alone"]["requests_per_second"] == pytest.approx(
            level["batching"]["requests_per_second"] / level["alone"]["requests_per_second"], abs=1e-3
        )
