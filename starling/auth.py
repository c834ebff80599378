"""API keys: bearer tokens for writes, stored hashed.

A token is ``stk_`` + 43 random URL-safe characters (256 bits). Servers keep only its sha256 in a keys file
(JSON, ``{"keys": [{"name", "sha256", "scopes"}]}``; ``STARLING_API_KEYS_FILE``, default
``WORKDIR/secrets/api_keys.json``); a random 256-bit token needs no slow hash. Clients send
``authorization: Bearer <token>`` (gRPC metadata) and find their token in ``STARLING_API_TOKEN``, else in
``WORKDIR/secrets/api-token``, which `starling up` writes (mode 0600) on first start so that the demo works
out of the box. ``starling auth create-key`` adds more keys; removing an entry from the file revokes it.

The server side is the interceptor in ``services/common/auth.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import grpc

from starling.config import Settings
from starling.errors import StarlingError

FEEDBACK_WRITE = "feedback:write"
CATALOG_WRITE = "catalog:write"
READ = "read"
SCOPES = (FEEDBACK_WRITE, CATALOG_WRITE, READ)
TOKEN_PREFIX = "stk_"
LOCAL_KEY_NAME = "local"

log = logging.getLogger("starling.auth")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]


class KeyRing:
    """The keys a server accepts, looked up by the token's hash in constant time per key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            document = json.loads(Path(path).read_text())
            keys = [
                ApiKey(str(entry["name"]), str(entry["sha256"]), frozenset(map(str, entry["scopes"])))
                for entry in document["keys"]
            ]
        except FileNotFoundError:
            return cls([])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StarlingError(f"{path}: not a readable API keys file ({exc})") from exc
        unknown = {scope for key in keys for scope in key.scopes} - set(SCOPES)
        if unknown:
            raise StarlingError(f"{path}: unknown scope(s) {sorted(unknown)}; known: {', '.join(SCOPES)}")
        return cls(keys)

    def find(self, token: str) -> ApiKey | None:
        digest = token_hash(token)
        found = None
        for key in self.keys:  # a handful of keys: compare all, in constant time each
            if hmac.compare_digest(key.sha256, digest):
                found = key
        return found


class KeysFile:
    """A keys file as a server reads it: re-read when its modification time or size changes; a broken edit
    keeps the previous keys (the error is logged once per change)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._ring = KeyRing([])

    def ring(self) -> KeyRing:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._ring = KeyRing.load(self.path)
            except StarlingError:
                log.exception(
                    "cannot read the API keys file; keeping the previous keys", extra={"path": str(self.path)}
                )
        return self._ring


def parse_bearer(authorization: str) -> str | None:
    """The token of an ``authorization`` value ``Bearer <token>`` (scheme case-insensitive), else None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def keys_file(settings: Settings) -> Path:
    return settings.api_keys_file or settings.workdir / "secrets" / "api_keys.json"


def token_file(workdir: Path) -> Path:
    return Path(workdir) / "secrets" / "api-token"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def add_key(path: Path, name: str, scopes: list[str]) -> str:
    """Append a new key with ``scopes`` to the keys file at ``path``; returns its token (shown once)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise StarlingError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
    ring = KeyRing.load(path)
    if any(key.name == name for key in ring.keys):
        raise StarlingError(f"{path}: a key named {name!r} exists already")
    token = new_token()
    entries = [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes)} for k in ring.keys]
    entries.append({"name": name, "sha256": token_hash(token), "scopes": sorted(scopes)})
    _write_private(Path(path), json.dumps({"keys": entries}, indent=1) + "\n")
    return token


def ensure_local_key(settings: Settings) -> str:
    """The local token of ``settings.workdir`` (created with every scope, and its hash added to the keys file,
    on first use): what `starling up` hands the web gateway, and the CLI and tests use."""
    path = token_file(settings.workdir)
    if path.is_file():
        token = path.read_text().strip()
        if KeyRing.load(keys_file(settings)).find(token) is not None:
            return token
    token = add_key(keys_file(settings), f"{LOCAL_KEY_NAME}-{secrets.token_hex(3)}", list(SCOPES))
    _write_private(path, token + "\n")
    return token


def client_token(settings: Settings) -> str | None:
    """The token this client sends: STARLING_API_TOKEN, else the workdir's local token file, else none."""
    if settings.api_token:
        return settings.api_token
    path = token_file(settings.workdir)
    return path.read_text().strip() if path.is_file() else None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class _CallDetails(
    namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.metadata = bearer_metadata(token)

    def intercept_unary_unary(self, continuation, details, request):
        metadata = (*(details.metadata or ()), *self.metadata)
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            ),
            request,
        )


def authorized_channel(target: str, token: str | None) -> grpc.Channel:
    """An insecure channel to ``target`` that sends ``token`` with every call (if there is one)."""
    channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel
