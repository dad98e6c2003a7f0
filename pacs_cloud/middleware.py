"""Request middleware of the project."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
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
