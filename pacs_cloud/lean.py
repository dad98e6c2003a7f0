"""A lean path through Django for small, frequent reads by API clients.

A QIDO-RS search with a bearer token needs none of the browser's middleware
(sessions, CSRF, messages, CSP, clickjacking, login lockout, static files),
and under ASGI each of those costs the request thread hand-offs: WhiteNoise
is synchronous only, so the whole stack crosses from the event loop to a
thread and back, and every ``process_request``/``process_response`` hook is
one more crossing. Views opt in with :func:`lean_for_bearer`; a request to
one of them that carries ``Authorization: Bearer`` is served by
:class:`LeanHandler`, which keeps only the security headers. Everything else
(a browser's session, HTTP Basic, every other URL) takes the full stack.

Authentication, the access policy and the audit are the view's own and do
not change with the path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, resolve, set_script_prefix

from .middleware import nul_refusal

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

LEAN_ATTRIBUTE = "lean_for_bearer"


def lean_for_bearer(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``view`` as served on the lean path when a bearer token authenticates the request."""
    setattr(view, LEAN_ATTRIBUTE, True)
    return view


def bearer_reads(full: ASGIApp) -> ASGIApp:
    """An ASGI app: requests :func:`takes_lean_path` accepts go to a :class:`LeanHandler`, the rest to ``full``."""
    lean = LeanHandler()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await (lean if takes_lean_path(scope) else full)(scope, receive, send)

    return app


def takes_lean_path(scope: Scope) -> bool:
    """Whether an ASGI HTTP request goes to :class:`LeanHandler`."""
    if scope.get("type") != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    if not any(name == b"authorization" and value[:7].lower() == b"bearer " for name, value in scope["headers"]):
        return False
    try:
        match = resolve(scope["path"])
    except Resolver404:
        return False
    return getattr(match.func, LEAN_ATTRIBUTE, False)


class BareHandler(ASGIHandler):
    """Django's ASGI handler with no middleware, for small reads served on the event loop.

    It leaves out the per-request thread context and the
    request_started/finished signals, whose receivers would each cost a hop
    into a thread: callers run their database work on threads that look after
    their connections as those signals would.
    """

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None
            await self.send_response(error_response, send)
        else:
            await self.send_response(await self.run_get_response(request), send)
        body_file.close()

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(
            self._get_response_async  # type: ignore[attr-defined]  # (not in django-stubs)
        )


class LeanHandler(BareHandler):
    """The bare handler with the security headers, the refusal of NUL characters and nothing else.

    ``SecurityMiddleware``'s two hooks only read settings and set headers, so
    they run on the event loop instead of a thread of their own; Content-Length
    is set as ``CommonMiddleware`` does, so clients need no chunked decoding.
    The lean views run on the DICOMweb worker threads
    (``archive.dicomweb.on_worker_thread``).
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async)
        inner: Callable[[HttpRequest], Awaitable[Any]] = convert_exception_to_response(  # type: ignore[assignment]
            self._get_response_async  # type: ignore[attr-defined]  # (not in django-stubs)
        )
        security = SecurityMiddleware(inner)

        async def chain(request: HttpRequest) -> Any:
            redirect = security.process_request(request) or nul_refusal(request)
            response = redirect or await inner(request)
            if not response.streaming and not response.has_header("Content-Length"):
                response.headers["Content-Length"] = str(len(response.content))  # as CommonMiddleware does
            return security.process_response(request, response)

        self._middleware_chain = chain
