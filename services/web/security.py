"""Who may write through the web gateway, and the headers every answer carries.

- A browser writes as the user of its **session**: ``POST /api/session {"user_id"}`` sets a signed cookie
  (HMAC-SHA256, HttpOnly, SameSite=Strict, Secure behind HTTPS) and a rating is accepted only for that user.
  Sign-in is open while ``STARLING_WEB_OPEN_SIGN_IN`` is on (the default: the demo has no accounts; put an
  identity provider in front and turn it off in production).
- A server-side client may instead send ``authorization: Bearer <token>`` with scope ``feedback:write``
  (the same API keys as gRPC) and write for any user.
- Cross-site requests are refused before anything else: a write must be ``application/json`` (a form or a
  ``text/plain`` body from another site cannot be) and its ``Origin``, when sent, must be the gateway's own
  or one of ``STARLING_WEB_ALLOWED_ORIGINS``.
- Every answer carries CSP, X-Content-Type-Options, X-Frame-Options and Referrer-Policy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from starling.auth import FEEDBACK_WRITE, KeysFile, parse_bearer

SESSION_COOKIE = "starling_session"
SESSION_TTL_S = 7 * 24 * 3600
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class Forbidden(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class WebSecurity:
    session_key: bytes
    keys: KeysFile
    open_sign_in: bool = True
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def create(
        cls, secret: str, keys_path: Path, open_sign_in: bool, allowed_origins: str = ""
    ) -> WebSecurity:
        key = secret.encode() if secret else secrets.token_bytes(32)  # random: sessions end with the process
        origins = frozenset(o.strip().rstrip("/") for o in allowed_origins.split(",") if o.strip())
        return cls(key, KeysFile(keys_path), open_sign_in, origins)

    # --- sessions --------------------------------------------------------------------------------------------
    def _signature(self, payload: str) -> str:
        return hmac.new(self.session_key, payload.encode(), hashlib.sha256).hexdigest()

    def session_value(self, user_id: int, now: float | None = None) -> str:
        payload = f"{user_id}.{int((now or time.time()) + SESSION_TTL_S)}"
        return f"{payload}.{self._signature(payload)}"

    def session_user(self, request: web.Request) -> int | None:
        """The user of a valid, unexpired session cookie, else None."""
        value = request.cookies.get(SESSION_COOKIE, "")
        user, _, rest = value.partition(".")
        expires, _, signature = rest.partition(".")
        if not (user.isdigit() and expires.isdigit() and signature):
            return None
        if not hmac.compare_digest(signature, self._signature(f"{user}.{expires}")):
            return None
        return int(user) if int(expires) > time.time() else None

    def set_session(self, request: web.Request, response: web.StreamResponse, user_id: int) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.session_value(user_id),
            max_age=SESSION_TTL_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
        )

    # --- checks ------------------------------------------------------------------------------------------------
    def check_same_site(self, request: web.Request) -> None:
        """Refuse a write that a page of another site could have sent."""
        content_type = request.content_type
        if content_type != "application/json":
            raise Forbidden(
                415, "UNSUPPORTED_MEDIA_TYPE", f"writes must be application/json, not {content_type!r}"
            )
        origin = request.headers.get("Origin")
        if origin is None:
            if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                raise Forbidden(403, "CROSS_ORIGIN", "cross-site write refused (Sec-Fetch-Site)")
            return
        own = f"{request.scheme}://{request.host}"
        forwarded = request.headers.get("X-Forwarded-Proto")
        candidates = {own, f"{forwarded}://{request.host}"} if forwarded else {own}
        if origin.rstrip("/") not in candidates | self.allowed_origins:
            raise Forbidden(403, "CROSS_ORIGIN", f"cross-origin write from {origin!r} refused")

    def writer(self, request: web.Request) -> int | None:
        """Who may write: a user id (session), or None for any user (an API key with feedback:write)."""
        token = parse_bearer(request.headers.get("Authorization", ""))
        if token is not None:
            key = self.keys.ring().find(token)
            if key is None:
                raise Forbidden(401, "UNAUTHENTICATED", "unknown or revoked API key")
            if FEEDBACK_WRITE not in key.scopes:
                raise Forbidden(403, "PERMISSION_DENIED", f"key {key.name!r} lacks scope {FEEDBACK_WRITE!r}")
            return None
        user = self.session_user(request)
        if user is None:
            raise Forbidden(
                401,
                "SIGN_IN_REQUIRED",
                "sign in first (POST /api/session) or send an API key with feedback:write",
            )
        return user


SECURITY = web.AppKey("security", WebSecurity)


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response
