"""The platform's access primitives: who holds which role where.

Memberships, the institutions where a user holds a role, role checks and the
DRF permission classes. Every app's ``access`` module builds on these; the
rule for studies (clinical roles at the study's institution, or an object
grant) is the archive's (``archive.access``), and the other apps compose it.
Being a platform administrator or an institution administrator shows no
patient data by itself.

``access_*`` lookups raise ``Http404`` alike for "missing" and "not yours", so
a caller learns nothing about other institutions' data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.http import Http404
from rest_framework.permissions import BasePermission

from . import authcache
from .models import CLINICAL_ROLES, Institution, Membership, Role


def authenticated(user: Any) -> bool:
    """A signed-in, active user (the anonymous user and deactivated accounts see nothing)."""
    return user is not None and getattr(user, "is_authenticated", False) and user.is_active


def memberships(user: Any) -> QuerySet[Membership]:
    if not authenticated(user):
        return Membership.objects.none()
    return Membership.objects.filter(user=user, is_active=True, institution__is_active=True)


def institution_ids(user: Any, roles: Iterable[str] | None = None) -> set[UUID]:
    """Institutions where ``user`` holds any of ``roles`` (any role when None)."""
    if not authenticated(user):
        return set()
    wanted = None if roles is None else tuple(sorted(roles))
    return set(authcache.remembered(("institutions", user.pk, wanted), lambda: _institution_ids(user, wanted)))


def _institution_ids(user: Any, roles: tuple[str, ...] | None) -> frozenset[UUID]:
    qs = memberships(user)
    if roles is not None:
        qs = qs.filter(role__in=roles)
    return frozenset(qs.values_list("institution_id", flat=True))


def roles_at(user: Any, institution: Institution | UUID) -> set[str]:
    institution_id: Any = getattr(institution, "pk", institution)
    return set(memberships(user).filter(institution_id=institution_id).values_list("role", flat=True))


def has_role(user: Any, institution: Institution | UUID, *roles: str) -> bool:
    return bool(roles_at(user, institution) & set(roles))


def access_institution(user: Any, institution_id: object, *roles: str) -> Institution:
    """An institution where ``user`` holds one of ``roles`` (any role if none given)."""
    ids = institution_ids(user, roles or None)
    try:
        key = UUID(str(institution_id))
    except ValueError:
        raise Http404("No such institution") from None
    if key not in ids:
        raise Http404("No such institution")
    return Institution.objects.get(pk=key)


# DRF ---------------------------------------------------------------------


class HasClinicalRole(BasePermission):
    """The caller holds a clinical role somewhere (the floor for PHI endpoints)."""

    message = "This needs a clinical role at an institution."

    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(institution_ids(request.user, CLINICAL_ROLES))


def role_permission(*roles: str) -> type[BasePermission]:
    """A DRF permission class: the caller holds one of ``roles`` at some institution."""

    class HasRole(BasePermission):
        message = "This needs the role: " + ", ".join(roles)

        def has_permission(self, request: Any, view: Any) -> bool:
            return bool(institution_ids(request.user, roles))

    HasRole.__name__ = "Has" + "Or".join(r.title().replace("_", "") for r in roles)
    return HasRole


IsInstitutionAdmin = role_permission(Role.INSTITUTION_ADMIN)
IsTechnologist = role_permission(Role.TECHNOLOGIST)
IsRadiologist = role_permission(Role.RADIOLOGIST)
IsReferralCoordinator = role_permission(Role.REFERRAL_COORDINATOR)
IsClinician = role_permission(Role.CLINICIAN)
