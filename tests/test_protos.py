"""The committed stubs in starling/v1 are exactly what protoc generates from protos/ (CI fails when stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from starling.config import REPO_ROOT


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    protos = sorted((REPO_ROOT / "protos" / "starling" / "v1").glob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO_ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    generated = {p.name: p.read_bytes() for p in (tmp_path / "starling" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in (REPO_ROOT / "starling" / "v1").glob("*_pb2*.py*")}
    assert set(generated) == set(committed), "stub files differ from the protos: run `make protos`"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert not stale, f"stale generated stubs {stale}: run `make protos`"


def test_public_api_shape() -> None:
    from starling.v1 import recommend_pb2

    fields = {f.name for f in recommend_pb2.RecommendResponse.DESCRIPTOR.fields}
    assert {"items", "model_version", "request_id", "degraded"} <= fields
    service = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"]
    assert {m.name for m in service.methods} >= {"Recommend", "SimilarItems"}
