"""Who may see which statistics: 404 alike for a scope that does not exist and one that is not the caller's.

An institution's administrators see their institution; the administrators
of the institution that owns a pool see what the pool read; the platform
administrator sees every institution's figures, one or all, without the
radiologists' and pools' names.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any
from uuid import UUID

from django.http import Http404
from django.utils import timezone

from pacs_cloud import access
from pacs_cloud.models import Institution, Role

from ..models import Priority, RadiologistPool
from .figures import Filters, Scope

MAX_DAYS = 400
DEFAULT_DAYS = 30
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")


class BadFilter(ValueError):
    """A filter the caller got wrong (400 in the API, a message on the page)."""


def _uuid(value: object) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise Http404("No such scope") from None


def admin_institutions(user: Any) -> list[Institution]:
    return list(Institution.objects.filter(pk__in=access.institution_ids(user, [Role.INSTITUTION_ADMIN])))


def owned_pools(user: Any) -> list[RadiologistPool]:
    ids = access.institution_ids(user, [Role.INSTITUTION_ADMIN])
    return list(RadiologistPool.objects.filter(owner_id__in=ids).select_related("owner"))


def may_see_statistics(user: Any) -> bool:
    return access.authenticated(user) and (
        bool(getattr(user, "is_platform_admin", False)) or bool(access.institution_ids(user, [Role.INSTITUTION_ADMIN]))
    )


def access_scope(user: Any, params: Any, *, preferred: Institution | None = None) -> Scope:
    """The scope ``params`` (``institution`` or ``pool``) names, if the caller may see it."""
    if not access.authenticated(user):
        raise Http404("No statistics")
    platform = bool(getattr(user, "is_platform_admin", False))
    admin_of = access.institution_ids(user, [Role.INSTITUTION_ADMIN])
    if params.get("pool"):
        pool = (
            RadiologistPool.objects.select_related("owner")
            .filter(owner_id__in=admin_of, pk=_uuid(params["pool"]))
            .first()
        )
        if pool is None:
            raise Http404("No such pool")
        return Scope("pool", pool=pool)
    if params.get("institution"):
        pk = _uuid(params["institution"])
        if pk in admin_of:
            return Scope("institution", institution=Institution.objects.get(pk=pk))
        if platform:
            institution = Institution.objects.filter(pk=pk).first()
            if institution is not None:
                return Scope("institution", institution=institution, named=False)
        raise Http404("No such institution")
    if platform and params.get("platform"):
        return Scope("platform", named=False)
    if preferred is not None and preferred.pk in admin_of:
        return Scope("institution", institution=preferred)
    if admin_of:
        return Scope("institution", institution=Institution.objects.filter(pk__in=admin_of).order_by("name").first())
    if platform:
        return Scope("platform", named=False)
    raise Http404("Statistics are for administrators")


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"{name} is not a date (YYYY-MM-DD).") from None


def parse_filters(scope: Scope, params: Any) -> Filters:
    """Date range (local days, both included; the last 30 by default), modality and priority."""
    today = timezone.now().astimezone(scope.zone).date()
    date_to = _date(params["to"], "to") if params.get("to") else today
    date_from = _date(params["from"], "from") if params.get("from") else date_to - timedelta(days=DEFAULT_DAYS - 1)
    if date_from > date_to:
        raise BadFilter("from is after to.")
    if (date_to - date_from).days >= MAX_DAYS:
        raise BadFilter(f"The range is at most {MAX_DAYS} days.")
    modality = str(params.get("modality") or "").strip().upper()
    if modality and not _MODALITY.match(modality):
        raise BadFilter("modality is a DICOM modality such as CT.")
    priority = str(params.get("priority") or "").strip().lower()
    if priority and priority not in Priority.values:
        raise BadFilter(f"priority is one of {', '.join(Priority.values)}.")
    return Filters(date_from, date_to, modality, priority)
