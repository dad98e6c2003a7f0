"""The lean path for single rendered frames and thumbnails (PS3.18 §10.4, §10.5).

A reader scrolling a series asks for one small image per slice, hundreds in a
row. On the full path each of them pays Django's middleware chain, DRF's
request wrapping and a hop into a worker thread, which together cost several
times the rendering itself. Here, a request that carries a bearer token and
names one instance (or one frame) is answered by an async view that decides
everything on the event loop from memos that are already warm:

* the token and the caller's institutions from :mod:`pacs_cloud.authcache`
  (revocation clears it in this process at once and in every other within
  ``AUTH_CACHE_SECONDS``);
* the UIDs from the viewer's short UID memo (:mod:`viewer.access`); whether
  the caller may see the study is still decided on every request;
* the study opening's audit from the per-process record of what was already
  audited in this window (a new opening is written, in a thread, as before);
* the image from the shared render cache, or rendered from the object's one
  frame (local storage is read inline; other storage in a thread).

Whenever a step needs the database (a memo is cold) the whole decision is
made again in a thread; it only reads, apart from the once-a-minute
``last_used_at`` touch, which is idempotent. Anything unusual (several frames,
an animation, an error) is handed to the full DRF view, so answers and errors
stay exactly the same. :func:`lean_http` routes bearer-token requests for these
URLs to a Django handler without the middleware chain.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied, SynchronousOnlyOperation
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import path
from rest_framework.exceptions import APIException

from archive.storage import FileSystemStorage, get_storage
from pacs_cloud.authentication import user_for_token
from pacs_cloud.lean import BareHandler

from . import views
from .access import access_instance, already_recorded, record_study_view
from .pixels import RenderError
from .render import render_cached, render_frame, render_key

T = TypeVar("T")
log = logging.getLogger(__name__)
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

LEAN_PATH = re.compile(
    r"^/dicomweb/studies/[^/]+/series/[^/]+/instances/[^/]+(?:/frames/[^/]+)?/(?:rendered|thumbnail)$"
)


class _FullPath(Exception):
    """This request needs the full view (several frames, an animation)."""


def _bearer_key(request: HttpRequest) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        return None
    return key


def _decide(
    request: HttpRequest, key: str, uids: tuple[str, str, str], frames: str | None, thumbnail: bool
) -> tuple[Any, views.RenderParams, str, str, bool]:
    """Authenticate, resolve and check access; what to render, its ETag and whether the opening is audited."""
    user, _ = user_for_token(key)
    request.user = user
    target = access_instance(user, *uids)
    if frames is not None:
        numbers = views._frame_numbers(frames, target)
        if len(numbers) > 1:
            raise _FullPath
        number = numbers[0]
    else:
        number = 1
    media_type = views._negotiate(request)
    if frames is None and media_type == "image/gif" and target.number_of_frames > 1 and not thumbnail:
        raise _FullPath
    params = views._params(request, media_type, thumbnail=thumbnail)
    kind = "thumbnail" if thumbnail else "rendered"
    audited = already_recorded(request, target.series.study)
    return (target, number), params, kind, render_key(target, str(number), params, kind), audited


async def rendered(
    request: HttpRequest,
    study_uid: str,
    series_uid: str,
    instance_uid: str,
    frames: str | None = None,
    *,
    thumbnail: bool = False,
) -> HttpResponseBase:
    """One instance's or frame's rendered image or thumbnail; bearer tokens on the lean path, others on DRF's."""
    key = _bearer_key(request)
    if key is not None:
        try:
            response = await _lean(request, key, (study_uid, series_uid, instance_uid), frames, thumbnail)
        except (_FullPath, APIException, Http404, PermissionDenied, RenderError):
            response = None  # answered by the full view below, with its exact error
        except Exception:  # an object the renderer cannot take: the full view refuses it with the reason
            log.warning("the lean path could not render %s", instance_uid, exc_info=True)
            response = None
        if response is not None:
            return response
    kwargs = {"study_uid": study_uid, "series_uid": series_uid, "instance_uid": instance_uid}
    if frames is not None:
        kwargs["frames"] = frames
        full = views.FrameThumbnail if thumbnail else views.FrameRendered
    else:
        full = views.InstanceThumbnail if thumbnail else views.InstanceRendered
    return await _in_thread(full.as_view())(request, **kwargs)


def _in_thread(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``function`` run in the sync thread, its database connection checked before and after (as per request)."""

    def run(*args: Any, **kwargs: Any) -> T:
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(run)


async def _lean(
    request: HttpRequest, key: str, uids: tuple[str, str, str], frames: str | None, thumbnail: bool
) -> HttpResponseBase | None:
    try:
        (target, number), params, kind, etag, audited = _decide(request, key, uids, frames, thumbnail)
    except SynchronousOnlyOperation:
        # A memo is cold: the same decision with database access, in a thread.
        (target, number), params, kind, etag, audited = await _in_thread(_decide)(request, key, uids, frames, thumbnail)
    if not audited:
        await _in_thread(record_study_view)(request, target.series.study, via=f"dicomweb.{kind}")
    if views._not_modified(request, etag):
        return views._cached_headers(HttpResponse(status=304), etag)
    if isinstance(get_storage(), FileSystemStorage):
        # A local read and one frame's decode and encode take about a millisecond:
        # cheaper on the loop than a hop into a thread and back.
        body = render_frame(target, number, params, kind=kind)
    else:
        body = render_cached(etag) or await sync_to_async(render_frame, thread_sensitive=False)(
            target, number, params, kind=kind
        )
    views.count_rendered(target.institution_id)  # in memory only: no database on the loop
    response = HttpResponse(body, content_type=params.media_type)
    response["X-Content-Type-Options"] = "nosniff"
    return views._cached_headers(response, etag)


_INSTANCE = "dicomweb/studies/<str:study_uid>/series/<str:series_uid>/instances/<str:instance_uid>"

# The lean handler's only routes (also listed, with their names, in viewer/urls.py).
urlpatterns = [
    path(f"{_INSTANCE}/rendered", rendered),
    path(f"{_INSTANCE}/thumbnail", rendered, {"thumbnail": True}),
    path(f"{_INSTANCE}/frames/<str:frames>/rendered", rendered),
    path(f"{_INSTANCE}/frames/<str:frames>/thumbnail", rendered, {"thumbnail": True}),
]


class LeanHandler(BareHandler):
    """The bare handler answering only this module's routes.

    The only database work here runs through :func:`_in_thread`, which looks
    after the connection as Django's request signals would.
    """

    def resolve_request(self, request: HttpRequest) -> Any:
        request.urlconf = __name__
        return super().resolve_request(request)


def lean_http(full: ASGIApp) -> ASGIApp:
    """An ASGI app: bearer-token GETs of one rendered instance or frame go to the lean handler, the rest to ``full``.

    Lean answers carry ``Server-Timing: app;dur=<ms>``, the time from the
    request's arrival in the application to its response head.
    """
    lean = LeanHandler()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not LEAN_PATH.match(scope["path"])
            or "\x00" in scope["path"]  # refused with its reason on the full path
            or not any(name == b"authorization" and value[:7].lower() == b"bearer " for name, value in scope["headers"])
        ):
            await full(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                duration = (time.perf_counter() - started) * 1000
                message["headers"] = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={duration:.2f}".encode()),
                ]
            await send(message)

        await lean(scope, receive, timed_send)

    return app
