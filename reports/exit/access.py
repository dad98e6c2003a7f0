"""Who may see and do what with exit jobs; every refusal is a 404 alike for missing and not yours.

An institution's administrator requests, follows, cancels, restarts and
downloads its exports. A platform administrator sees every job (no PHI in
it: names, counts, digests) and offboards; they never download one.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.http import Http404

from pacs_cloud.access import institution_ids
from pacs_cloud.models import Role

from .models import ExitJob


def _admin_of(user: Any) -> set[UUID]:
    return institution_ids(user, [Role.INSTITUTION_ADMIN])


def is_platform_admin(user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False) and getattr(user, "is_platform_admin", False))


def visible_exit_jobs(user: Any) -> QuerySet[ExitJob]:
    if is_platform_admin(user):
        return ExitJob.objects.all()
    return ExitJob.objects.filter(institution_id__in=_admin_of(user))


def _get(qs: QuerySet[ExitJob], pk: object) -> ExitJob:
    try:
        key = UUID(str(pk))
    except ValueError:
        raise Http404("No such export") from None
    found = qs.filter(pk=key).first()
    if found is None:
        raise Http404("No such export")
    return found


def access_exit_job(user: Any, pk: object) -> ExitJob:
    """A job the caller may follow: its institution's administrator, or a platform administrator."""
    return _get(visible_exit_jobs(user), pk)


def access_own_exit_job(user: Any, pk: object) -> ExitJob:
    """A job the caller may act on and download: its institution's administrator only."""
    return _get(ExitJob.objects.filter(institution_id__in=_admin_of(user)), pk)


def access_offboarding(user: Any, pk: object) -> ExitJob:
    """A job a platform administrator may offboard from (everyone else: 404)."""
    if not is_platform_admin(user):
        raise Http404("No such export")
    return _get(ExitJob.objects.all(), pk)
