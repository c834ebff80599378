"""The KServe ranker: the serving encoder equals the one transform, and a real ModelServer process answers
Open Inference Protocol v2 over gRPC and REST, rejects bad input, and hot-reloads a newly published model."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from services.ranker.encoding import ServingEncoder, blank_user, user_columns
from starling.config import REPO_ROOT
from starling.features.spec import USER_FEATURE_COLUMNS, FeatureSpec
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
    spec = FeatureSpec.load(features / "feature_spec.json")
    encoder = ServingEncoder(spec, pl.read_parquet(features / "movie_features.parquet"))
    movie_ids = np.array([1, 356, 2571, 318, 999999, 260])  # 999999: not in the catalog
    user_row = pl.read_parquet(features / "user_features.parquet").filter(pl.col("user_id") == 1)
    expected = transform(_joined(features, 1, movie_ids), spec)
    got = encoder.encode(user_columns(1, user_row.select(USER_FEATURE_COLUMNS).to_dicts()[0]), movie_ids)
    for key in expected:
        if key != "label":
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    unknown = encoder.encode(blank_user(424242), movie_ids[:2])
    assert (unknown["user"] == 0).all() and (unknown["numeric_missing"][:, 4:] == 1).all()


def _start_ranker(workdir: Path, grpc_port: int, http_port: int, log: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        STARLING_WORKDIR=str(workdir),
        STARLING_RANKER_GRPC_PORT=str(grpc_port),
        STARLING_RANKER_HTTP_PORT=str(http_port),
        STARLING_RANKER_REFRESH_S="0.5",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "services.ranker.server"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _request(user_id: int, movie_ids: np.ndarray) -> InferRequest:
    user = InferInput("user_id", [1], "INT64")
    user.set_data_from_numpy(np.array([user_id], dtype=np.int64), binary_data=True)
    movies = InferInput("movie_ids", [len(movie_ids)], "INT64")
    movies.set_data_from_numpy(movie_ids.astype(np.int64), binary_data=True)
    return InferRequest(model_name=MODEL, infer_inputs=[user, movies])


@pytest.mark.slow
def test_kserve_ranker_v2_grpc_rest_bad_input_and_hot_reload(
    ml_small_trained: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    from conftest import copy_workdir

    from training.artifacts import load_artifact, resolve_artifact
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
        movie_ids = pl.read_parquet(workdir / "movies.parquet")["movie_id"].to_numpy()[:500]
        expected = artifact.predict(_joined(workdir / "features", 1, movie_ids))

        async def grpc_calls() -> None:
            async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
                response = await client.infer(_request(1, movie_ids))
                outputs = {o.name: o.as_numpy() for o in response.outputs}
                np.testing.assert_allclose(outputs["scores"], expected, rtol=1e-5, atol=1e-6)
                assert outputs["user_features_found"].tolist() == [True]
                assert response.model_version == artifact.version
                cold = await client.infer(_request(987654, movie_ids[:3]))
                assert {o.name: o.as_numpy() for o in cold.outputs}["user_features_found"].tolist() == [False]
                for bad in (_request(-1, movie_ids[:3]), _request(1, np.array([], dtype=np.int64))):
                    with pytest.raises(Exception, match=r"ids must be|movie_ids must hold"):
                        await client.infer(bad)

        asyncio.run(grpc_calls())

        rest = httpx.post(
            f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]},
                    {"name": "movie_ids", "shape": [3], "datatype": "INT64", "data": movie_ids[:3].tolist()},
                ]
            },
            timeout=10,
        )
        assert rest.status_code == 200, rest.text
        scores = next(o for o in rest.json()["outputs"] if o["name"] == "scores")["data"]
        np.testing.assert_allclose(scores, expected[:3], rtol=1e-5, atol=1e-6)
        missing = httpx.post(
            f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]},
        )
        assert missing.status_code == 400 and "movie_ids" in missing.text

        # Hot reload: publish a new version while requests keep flowing; none fails, the version changes.
        new = train_command(workdir, "embedding_mlp", epochs=1, publish=True)

        async def during_reload() -> set[str]:
            versions: set[str] = set()
            async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
                deadline = time.monotonic() + 60
                while new.version not in versions and time.monotonic() < deadline:
                    response = await client.infer(_request(1, movie_ids))
                    versions.add(response.model_version)
            return versions

        versions = asyncio.run(during_reload())
        assert new.version in versions, f"ranker never served {new.version}: {versions}"
    finally:
        process.terminate()
        process.wait(timeout=30)
