"""Who may see what: the one door every view, API and DICOMweb route goes through.

Rules (DESIGN.md, "Who may see what"):

* a member holding a clinical role at an institution sees that institution's
  studies and what hangs off them (series, instances, orders, reports);
* anyone else sees a study only through an object-level grant
  (django-guardian ``archive.view_study``) held by them or by one of their
  institution-role groups — grants are written by actions elsewhere (a
  reading-task claim, a signed report, a referral, a share) and read only here;
* being a platform administrator or an institution administrator shows no
  patient data by itself.

``access_*`` lookups raise ``Http404`` alike for "missing" and "not yours", so
a caller learns nothing about other institutions' data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from django.apps import apps
from django.db.models import CharField, Q, QuerySet, Value
from django.http import Http404
from rest_framework.permissions import BasePermission

from . import authcache
from .models import CLINICAL_ROLES, Institution, Membership, Role

VIEW_STUDY = "view_study"


def _authenticated(user: Any) -> bool:
    return user is not None and getattr(user, "is_authenticated", False) and user.is_active


def memberships(user: Any) -> QuerySet[Membership]:
    if not _authenticated(user):
        return Membership.objects.none()
    return Membership.objects.filter(user=user, is_active=True, institution__is_active=True)


def institution_ids(user: Any, roles: Iterable[str] | None = None) -> set[UUID]:
    """Institutions where ``user`` holds any of ``roles`` (any role when None)."""
    if not _authenticated(user):
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


# Studies -----------------------------------------------------------------


def _granted_study_ids(user: Any, codename: str = VIEW_STUDY) -> Q:
    user_grants = apps.get_model("archive", "StudyUserObjectPermission").objects.filter(
        user=user, permission__codename=codename
    )
    group_grants = apps.get_model("archive", "StudyGroupObjectPermission").objects.filter(
        group__user=user, permission__codename=codename
    )
    return Q(pk__in=user_grants.values("content_object_id")) | Q(pk__in=group_grants.values("content_object_id"))


def visible_studies(user: Any) -> QuerySet:
    """Every study ``user`` may open, as a queryset of ``archive.Study``."""
    Study = apps.get_model("archive", "Study")
    if not _authenticated(user):
        return Study.objects.none()
    own = institution_ids(user, CLINICAL_ROLES)
    return Study.objects.filter(Q(institution_id__in=own) | _granted_study_ids(user))


def searchable_studies(user: Any) -> QuerySet:
    """The same studies as :func:`visible_studies`, for searches over large archives.

    The grants are read first (one small query, remembered like the
    memberships for ``AUTH_CACHE_SECONDS``; a grant given or taken away in
    this process clears the memo) and the result filters on plain lists, so
    the planner can walk the (institution, date) indexes in order instead of
    scanning every study against two subqueries.
    """
    Study = apps.get_model("archive", "Study")
    if not _authenticated(user):
        return Study.objects.none()
    own, granted = authcache.remembered(("searchable", user.pk), lambda: _searchable_keys(user))
    rule = Q(institution_id__in=own)
    if granted:
        rule |= Q(pk__in=granted)
    return Study.objects.filter(rule)


def _searchable_keys(user: Any) -> tuple[frozenset[Any], frozenset[Any]]:
    # One round trip for both: the institutions (kind "i") and the granted studies ("s").
    kind = Value("i", output_field=CharField())
    own_rows = memberships(user).filter(role__in=list(CLINICAL_ROLES)).values_list("institution_id", kind)
    grants = [
        apps.get_model("archive", model)
        .objects.filter(**{lookup: user, "permission__codename": VIEW_STUDY})
        .values_list("content_object_id", Value("s", output_field=CharField()))
        for model, lookup in (("StudyUserObjectPermission", "user"), ("StudyGroupObjectPermission", "group__user"))
    ]
    own: set[Any] = set()
    granted: set[Any] = set()
    for key, what in own_rows.union(*grants, all=True):
        (own if what == "i" else granted).add(key)
    return frozenset(own), frozenset(granted)


def access_study(user: Any, *, pk: object = None, uid: str | None = None) -> Any:
    """The study with primary key ``pk`` or Study Instance UID ``uid``, if visible."""
    qs = visible_studies(user)
    try:
        if pk is not None:
            return qs.get(pk=UUID(str(pk)))
        if uid is not None:
            # The same UID may exist at two institutions (an imported copy);
            # prefer the caller's own institution's copy.
            own = institution_ids(user, CLINICAL_ROLES)
            matches = list(qs.filter(study_instance_uid=uid)[:2])
            if matches:
                return sorted(matches, key=lambda s: s.institution_id not in own)[0]
    except (ValueError, qs.model.DoesNotExist):
        pass
    raise Http404("No such study")


def can_view_study(user: Any, study: Any) -> bool:
    """Whether ``study`` is among ``visible_studies(user)``, decided cheaply for one row.

    For hot paths (every rendered frame): a study of one of the caller's own
    clinical institutions needs no query beyond the caller's memberships.
    """
    if not _authenticated(user):
        return False
    if study.institution_id in institution_ids(user, CLINICAL_ROLES):
        return True
    return visible_studies(user).filter(pk=study.pk).exists()


def visible_series(user: Any) -> QuerySet:
    Series = apps.get_model("archive", "Series")
    return Series.objects.filter(study__in=visible_studies(user))


def visible_instances(user: Any) -> QuerySet:
    Instance = apps.get_model("archive", "Instance")
    return Instance.objects.filter(series__study__in=visible_studies(user))


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
