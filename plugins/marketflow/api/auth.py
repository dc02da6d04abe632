"""Who may call the API: nobody anonymous.

* Standalone (``auth=token``): ``Authorization: Bearer <token>``, a token made by
  ``marketflow api-token create``; the database keeps only its SHA-256 and checks it through
  ``ops.api_token_owner`` (the API's role reads no ops table). A token checked once is trusted for
  ``TOKEN_CACHE_SECONDS``, so a revocation takes effect within that time.
* Inside Airflow's API server (``auth=airflow``): Airflow's own login, the JWT of its UI session
  cookie or an ``Authorization: Bearer`` JWT from ``POST /auth/token``. Airflow does not protect plugin
  apps by itself, so every route of this app depends on this check.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from fastapi import Request

TOKEN_CACHE_SECONDS = 30
TOKEN_BYTES = 32


class AuthError(Exception):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message, self.fix = message, fix


def new_token() -> tuple[str, str]:
    """A new token and the hash stored for it."""
    token = "mf_" + secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(request: Request) -> str:
    """The caller's name, or AuthError (401)."""
    request.state.caller = name = await _caller(request)  # for the access log
    return name


async def _caller(request: Request) -> str:
    settings = request.app.state.settings
    if settings.auth == "airflow":
        return await _airflow_user(request)
    token = _bearer(request)
    if not token:
        raise AuthError("no credentials: this API needs a bearer token",
                        "send 'Authorization: Bearer <token>'; create one with `marketflow api-token create NAME`")
    digest = token_hash(token)
    cache: dict[str, tuple[str, float]] = request.app.state.token_cache
    hit = cache.get(digest)
    if hit and hit[1] > time.monotonic():
        return hit[0]
    _, rows = await request.app.state.warehouse.fetch("SELECT ops.api_token_owner(%s)", (digest,))
    name = rows[0][0] if rows else None
    if name is None:
        cache.pop(digest, None)
        raise AuthError("the bearer token is unknown or revoked",
                        "create a new one with `marketflow api-token create NAME` (`marketflow api-token list` "
                        "shows the live ones)")
    cache[digest] = (name, time.monotonic() + TOKEN_CACHE_SECONDS)
    return name


async def _airflow_user(request: Request) -> str:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException

    token = _bearer(request) or request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise AuthError("not logged in to Airflow", "log in to the Airflow UI, or send 'Authorization: Bearer <JWT>' "
                        "from Airflow's POST /auth/token")
    try:
        user = await resolve_user_from_token(token)
    except HTTPException as exc:
        raise AuthError(f"Airflow refused the credentials: {exc.detail}", "log in to the Airflow UI again") from exc
    return user.get_name()
