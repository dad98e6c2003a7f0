"""Who may read usage statements: the institution's administrators and the platform administrator."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import Http404

from ..access import access_institution, authenticated
from ..models import Institution, Role


def is_platform_admin(user: Any) -> bool:
    return authenticated(user) and bool(getattr(user, "is_platform_admin", False))


def access_statement_institution(user: Any, institution_id: object) -> Institution:
    """The institution whose statements ``user`` may read; 404 alike for missing and not theirs."""
    if is_platform_admin(user):
        try:
            return Institution.objects.get(pk=UUID(str(institution_id)))
        except (ValueError, Institution.DoesNotExist):
            raise Http404("No such institution") from None
    return access_institution(user, institution_id, Role.INSTITUTION_ADMIN)


def require_platform_admin(user: Any) -> None:
    """The overview and the price list are the platform administrator's alone; anyone else gets a 404."""
    if not is_platform_admin(user):
        raise Http404("No such page")
