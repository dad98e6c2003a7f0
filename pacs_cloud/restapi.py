"""REST API defaults shared by every app: pages, ids in URLs and refusals (bodies: ``parsers``).

A bad request is the client's mistake and is answered 4xx with its reason,
whatever part of the request is wrong: a JSON body that is not an object, a
page far past any table, an id that is not a UUID, a delete of something
others still point to.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import exceptions, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class Pagination(LimitOffsetPagination):
    """Limit/offset pages; ``limit`` is capped at ``max_limit``, an ``offset`` past ``MAX_OFFSET`` refused.

    Without bounds a number beyond the database's 64-bit integers reached the query and failed there.
    """

    max_limit = 1000
    MAX_OFFSET = 1_000_000_000

    def get_offset(self, request: Any) -> int:
        offset = super().get_offset(request)
        if offset > self.MAX_OFFSET:
            raise exceptions.ValidationError({self.offset_query_param: f"at most {self.MAX_OFFSET}"})
        return offset


class Router(SimpleRouter):
    """A router whose detail URLs match only UUIDs, every resource's id: anything else is a plain 404."""

    def get_lookup_regex(self, viewset: Any, lookup_prefix: str = "") -> str:
        kwarg = getattr(viewset, "lookup_url_kwarg", None) or getattr(viewset, "lookup_field", "pk")
        value = getattr(viewset, "lookup_value_regex", UUID_PATTERN)
        return f"(?P<{lookup_prefix}{kwarg}>{value})"


def exception_handler(error: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus refusals raised below the API layer.

    A model validation error is the client's (400); deleting a row others
    still refer to is a conflict (409) naming what refers to it.
    """
    if isinstance(error, DjangoValidationError):
        error = exceptions.ValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages)
    elif isinstance(error, ProtectedError):
        set_rollback()
        return _in_use(error.protected_objects)
    elif isinstance(error, RestrictedError):
        set_rollback()
        return _in_use(error.restricted_objects)
    return drf_exception_handler(error, context)


def _in_use(referring: Any) -> Response:
    kinds = sorted({str(obj._meta.verbose_name_plural) for obj in referring})
    return Response(
        {"detail": f"It is still in use ({', '.join(kinds)} refer to it): change or remove those first."},
        status=status.HTTP_409_CONFLICT,
    )
