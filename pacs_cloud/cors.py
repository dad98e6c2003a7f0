"""Cross-origin reads of DICOMweb and the REST API (CORS, fetch standard §3.2).

A web viewer served from another origin (OHIF on its own host) calls our
DICOMweb with an ``Authorization`` header, so the browser first sends a
pre-flight ``OPTIONS`` without credentials. Pre-flights from an origin in
``CORS_ALLOWED_ORIGINS`` are answered here, before authentication; others
get 403. Answers to an allowed origin name it in
``Access-Control-Allow-Origin``. Credentials mode stays off: cookies (the
browser session) never work across origins, so a page elsewhere cannot act
as a signed-in user; it must send a token of its own.

An ASGI wrapper, outermost, so the lean bearer-token paths get the same
headers as the full middleware chain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

PATHS = ("/dicomweb/", "/api/")
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = ("authorization", "content-type", "accept", "if-none-match", "if-modified-since", "range")
EXPOSED_HEADERS = "Content-Location, Content-Length, ETag, Location, Retry-After, Warning"
PREFLIGHT_MAX_AGE = "600"


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def cors_http(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI HTTP app with CORS for :data:`PATHS`."""

    async def cors(scope: Scope, receive: Any, send: Any) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None or not scope["path"].startswith(PATHS):
            await app(scope, receive, send)
            return
        allowed = origin.decode("latin-1") in settings.CORS_ALLOWED_ORIGINS
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await _preflight(scope, send, origin if allowed else None)
            return
        extra = [(b"vary", b"Origin")]
        if allowed:
            extra += [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
            ]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await app(scope, receive, send_with_headers)

    return cors


async def _preflight(scope: Scope, send: Any, origin: bytes | None) -> None:
    """204 with what the origin may send; 403 naming no origin when it may send nothing."""
    headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
    requested = (_header(scope, b"access-control-request-headers") or b"").decode("latin-1").lower()
    wanted = {name.strip() for name in requested.split(",") if name.strip()}
    if origin is None or not wanted <= set(ALLOWED_HEADERS):
        status = 403
    else:
        status = 204
        headers += [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", METHODS.encode()),
            (b"access-control-allow-headers", ", ".join(ALLOWED_HEADERS).encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
