"""401, not 403, for a request to the public REST API whose token Airflow rejects.

Airflow 3.3 answers ``401 Not authenticated`` when a request to ``/api/v2`` carries no token, but ``403
Invalid JWT token`` when it carries one that is malformed, signed with another key, revoked or names no
valid user (``airflow.api_fastapi.core_api.security.resolve_user_from_token``). A 403 tells a client
"you are known but not allowed", so scripts stop instead of logging in again. This root middleware of the
api-server (registered by ``plugins/mlops_plugin.py`` as a ``fastapi_root_middlewares`` entry) turns
exactly those answers into::

    401  WWW-Authenticate: Bearer error="invalid_token", error_description="..."
    {"detail": "The access token was refused (Airflow: Invalid JWT token): it is invalid, expired or
                revoked. Get a new one with POST /auth/token ..."}

and gives Airflow's own 401 answers the ``WWW-Authenticate: Bearer`` header they lack (RFC 9110 requires
it); an expired token, already a 401 in Airflow, gets the same detail as an invalid one.

How it decides, staying on Airflow's own token validation:

* Only requests under ``/api/v2`` and the bundle's report app ``/mlops`` (by default) are looked at: not
  ``/execution`` (task processes, their own tokens and rules), ``/ui``, ``/auth`` or static files.
* Nothing is done before the request is handled and nothing at all for answers other than 401/403, so
  successful requests cost one status check. Only when the API answers 401 or 403 to a request that
  carried a credential (the bearer token Airflow would use, else the UI's ``_token`` cookie, the same
  precedence as Airflow's ``get_user``) is that credential checked again with Airflow's
  ``resolve_user_from_token`` (signature, claims, expiry, revocation, user). If Airflow rejects it, the
  answer becomes the 401 above; if it accepts it, the answer is left alone: a viewer's 403 on a
  mutation stays a 403.
* The response headers of the original answer (e.g. the cookie-clearing ``Set-Cookie`` of Airflow's JWT
  refresh middleware) are kept.

No Airflow import at module level: plugin files are imported by every Airflow process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_PREFIXES = ("/api/v2", "/mlops")  # the public REST API and the bundle's report app
COOKIE_NAME = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
_REWRITTEN_HEADERS = {b"content-length", b"content-type", b"www-authenticate"}


def _route_path(scope: Scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def request_credential(scope: Scope) -> tuple[str, str] | None:
    """(token, where) that Airflow's ``get_user`` authenticates this request with, or None.

    A bearer ``Authorization`` header wins; otherwise the ``_token`` cookie (a non-bearer header or an
    empty bearer value is ignored by Airflow, which then falls back to the cookie).
    """
    from starlette.datastructures import Headers
    from starlette.requests import cookie_parser

    headers = Headers(scope=scope)
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), "Authorization header"
    cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE_NAME)
    return (cookie, f"{COOKIE_NAME} cookie") if cookie else None


async def airflow_rejection(token: str) -> str | None:
    """Airflow's reason for rejecting ``token`` ("Invalid JWT token", "Token Expired"), None if valid."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException

    try:
        await resolve_user_from_token(token)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            return str(exc.detail)
        raise
    return None


def unauthorized_body(reason: str, where: str, root_path: str = "") -> bytes:
    detail = (
        f"The access token in the {where} was refused (Airflow: {reason}): it is invalid, expired or "
        f"revoked. Get a new one with POST {root_path}/auth/token "
        '{"username": "...", "password": "..."} and send it as "Authorization: Bearer <access_token>" '
        "(in the UI: log in again)."
    )
    return json.dumps({"detail": detail}).encode()


class InvalidTokenIs401:
    """Pure ASGI middleware: see the module docstring.

    ``prefixes``: the route paths (below the api-server's root path) it applies to.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], prefixes: Iterable[str] = DEFAULT_PREFIXES):
        self.app = app
        self.prefixes = tuple(p.rstrip("/") for p in prefixes)

    def covers(self, scope: Scope) -> bool:
        path = _route_path(scope)
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.covers(scope):
            await self.app(scope, receive, send)
            return

        held: Message | None = None  # the start of a 401/403 answer, until its body is complete
        chunks: list[bytes] = []

        async def send_or_hold(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = await self._answer(scope, held, b"".join(chunks))
            held = None
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_or_hold)

    async def _answer(self, scope: Scope, start: Message, body: bytes) -> tuple[Message, bytes]:
        """The (start message, body) to send instead of a held 401/403 answer."""
        status = start["status"]
        headers = list(start.get("headers", []))
        credential = request_credential(scope)
        if credential is None:
            if status == 401 and not any(k.lower() == b"www-authenticate" for k, _ in headers):
                headers.append((b"www-authenticate", b"Bearer"))
            return {**start, "headers": headers}, body
        token, where = credential
        try:
            reason = await airflow_rejection(token)
        except Exception:  # e.g. the metadata DB is down during the revocation check: keep Airflow's answer
            log.warning(
                "could not re-check a refused token; keeping Airflow's %s answer", status, exc_info=True
            )
            return start, body
        if reason is None:  # a valid token: Airflow's answer (e.g. 403 Forbidden) stands
            return start, body
        new_body = unauthorized_body(reason, where, scope.get("root_path", ""))
        challenge = 'Bearer error="invalid_token", error_description="The access token is invalid or expired"'
        headers = [(k, v) for k, v in headers if k.lower() not in _REWRITTEN_HEADERS] + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(new_body)).encode()),
            (b"www-authenticate", challenge.encode()),
        ]
        return {**start, "status": 401, "headers": headers}, new_body
