"""Request middleware of the project."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.utils import timezone


def time_zone(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Every request starts and ends in UTC.

    A page activates its institution's zone while it renders
    (:func:`pacs_cloud.context_processors.tenancy`); the activation is
    thread-local, so without this the next request on the thread (an API
    call, another institution's page) would inherit it.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        timezone.deactivate()
        try:
            return get_response(request)
        finally:
            timezone.deactivate()

    return middleware


NUL_REFUSAL = "A URL may not contain NUL characters."


def nul_refusal(request: HttpRequest) -> HttpResponse | None:
    """400 when the path or a query parameter holds a NUL character, else None.

    No identifier, filter or search term of ours has one, and PostgreSQL
    refuses them in text: a view passing a parameter on as it came would fail
    with a 500 instead of telling the client.
    """
    if "\x00" not in request.path and not any(
        "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
    ):
        return None
    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse({"detail": NUL_REFUSAL}, status=400)
    return HttpResponseBadRequest(NUL_REFUSAL, content_type="text/plain; charset=utf-8")


def refuse_nul_characters(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Answer :func:`nul_refusal` before any view reads the request."""

    def middleware(request: HttpRequest) -> HttpResponse:
        return nul_refusal(request) or get_response(request)

    return middleware
