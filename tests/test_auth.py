"""API keys: creation, hashed storage, lookup, the local key of `starling up`, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.common.auth import AuthInterceptor, bearer_token
from starling.auth import KeyRing, add_key, ensure_local_key, token_hash
from starling.cli import cli
from starling.config import Settings
from starling.errors import StarlingError


def test_keys_are_stored_hashed_and_found_by_token(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    writer = add_key(path, "writer", ["feedback:write"])
    admin = add_key(path, "admin", ["catalog:write", "feedback:write"])
    stored = path.read_text()
    assert writer not in stored and admin not in stored and token_hash(writer) in stored
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ring = KeyRing.load(path)
    assert ring.find(writer).name == "writer" and ring.find(admin).scopes == {
        "catalog:write",
        "feedback:write",
    }
    assert ring.find(writer + "x") is None and ring.find("") is None
    with pytest.raises(StarlingError, match="exists already"):
        add_key(path, "writer", ["read"])
    with pytest.raises(StarlingError, match="scopes must be among"):
        add_key(path, "bad", ["root"])
    path.write_text(json.dumps({"keys": [{"name": "x", "sha256": "00", "scopes": ["root"]}]}))
    with pytest.raises(StarlingError, match="unknown scope"):
        KeyRing.load(path)
    assert KeyRing.load(tmp_path / "missing.json").keys == []


def test_the_local_key_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(workdir=tmp_path)
    token = ensure_local_key(settings)
    assert ensure_local_key(settings) == token
    assert KeyRing.load(tmp_path / "secrets" / "api_keys.json").find(token).scopes == {
        "feedback:write",
        "catalog:write",
        "read",
    }
    (tmp_path / "secrets" / "api_keys.json").unlink()  # revoked: a new local key replaces it
    assert ensure_local_key(settings) != token


def test_which_methods_need_which_scope() -> None:
    open_reads = AuthInterceptor(Path("/nonexistent"), auth_reads=False)
    closed_reads = AuthInterceptor(Path("/nonexistent"), auth_reads=True)
    assert open_reads.required_scope("/starling.v1.RecommendService/RecordFeedback") == "feedback:write"
    assert open_reads.required_scope("/starling.v1.CatalogService/UpsertMovie") == "catalog:write"
    assert open_reads.required_scope("/starling.v1.RecommendService/Recommend") is None
    assert closed_reads.required_scope("/starling.v1.RecommendService/Recommend") == "read"
    assert closed_reads.required_scope("/starling.v1.CatalogService/GetMovie") == "read"
    assert closed_reads.required_scope("/grpc.health.v1.Health/Check") is None
    assert closed_reads.required_scope("/starling.v1.RecallService/Recall") is None  # internal stage
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None and bearer_token(None) is None


def test_cli_creates_a_key_and_prints_its_token_once(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["auth", "create-key", str(tmp_path), "--name", "ci", "--scope", "feedback:write"]
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert token.startswith("stk_") and KeyRing.load(tmp_path / "secrets" / "api_keys.json").find(token)
    again = CliRunner().invoke(cli, ["auth", "create-key", str(tmp_path), "--name", "ci", "--scope", "read"])
    assert again.exit_code == 2 and "exists already" in again.output
    bad = CliRunner().invoke(cli, ["auth", "create-key", str(tmp_path), "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2 and "'root' is not one of" in bad.output
