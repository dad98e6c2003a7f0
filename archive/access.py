"""Who sees a study: the one rule every view, API, DICOMweb route and other app goes through.

Built on the platform's role primitives (``pacs_cloud.access``). Rules
(DESIGN.md, "Who may see what"):

* a member holding a clinical role at an institution sees that institution's
  studies and what hangs off them (series, instances, and in the other apps
  orders, tasks and reports);
* anyone else sees a study only through an object-level grant
  (django-guardian ``archive.view_study``) held by them or by one of their
  institution-role groups; grants are written by ``archive.actions``
  (:func:`~archive.actions.grant_study_view`, called by the reading-task
  claim, referrals and shares) and read only here; a reading task's
  relevant priors are granted the same way under their own permission
  (``archive.view_prior_study``): visible like any granted study, but
  read-only, and their openings audited as openings of a prior
  (:func:`seen_as_prior`);
* being a platform administrator or an institution administrator shows no
  patient data by itself.

Other apps compose this rule (:func:`study_reach`, :func:`visible_studies`,
:func:`can_view_study`) and never restate it. ``access_*`` lookups raise
``Http404`` alike for "missing" and "not yours", so a caller learns nothing
about other institutions' data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db.models import CharField, Q, QuerySet, Value
from django.http import Http404
from django.utils import timezone

from pacs_cloud import authcache
from pacs_cloud.access import authenticated, institution_ids, memberships
from pacs_cloud.models import CLINICAL_ROLES

from .models import (
    BreakGlassAccess,
    Instance,
    Series,
    Study,
    StudyGroupObjectPermission,
    StudyUserObjectPermission,
)

VIEW_STUDY = "view_study"
# A study granted as a relevant prior of one being read: seen, never written to.
VIEW_PRIOR = "view_prior_study"


def _grants(user: Any, codenames: tuple[str, ...] = (VIEW_STUDY, VIEW_PRIOR)) -> tuple[QuerySet, QuerySet]:
    """The user's own study grants and those of their groups (full and prior grants alike by default)."""
    return (
        StudyUserObjectPermission.objects.filter(user=user, permission__codename__in=codenames).exclude(
            content_object_id__in=_expired_break_glass(user)
        ),
        StudyGroupObjectPermission.objects.filter(group__user=user, permission__codename__in=codenames),
    )


# Break-glass (archive.breakglass): a grant it wrote counts only until its expiry,
# whether or not the sweep has taken it back yet (memoised reach: AUTH_CACHE_SECONDS).
def _expired_break_glass(user: Any) -> QuerySet:
    return BreakGlassAccess.objects.filter(user=user, ended_at__isnull=True, expires_at__lte=timezone.now()).values(
        "study_id"
    )


@dataclass(frozen=True)
class StudyReach:
    """Why a user sees studies: institutions where they hold a clinical role, and studies granted to them."""

    institutions: frozenset[Any]
    granted: frozenset[Any]
    # Of ``granted``, the studies seen only as priors of a study being read (read-only).
    priors: frozenset[Any] = frozenset()

    def parts(self, *, institution: str = "institution_id", study: str = "pk") -> list[Q]:
        """The rule as disjoint filters (own institutions; other granted studies), empty when nothing is visible.

        ``institution`` and ``study`` are the lookups of the row's institution
        (which must be its study's) and of its study: a report passes
        ``study="study_id"``. Plain lists, so each filter can walk an
        (institution, date) index in order; a paged search reads each part
        up to the page's end and merges them.
        """
        parts = []
        if self.institutions:
            parts.append(Q(**{f"{institution}__in": self.institutions}))
        if self.granted:
            granted = Q(**{f"{study}__in": self.granted})
            parts.append(granted & ~Q(**{f"{institution}__in": self.institutions}) if self.institutions else granted)
        return parts

    def q(self, *, institution: str = "institution_id", study: str = "pk") -> Q:
        """The rule as one filter (see :meth:`parts` for the lookups)."""
        rule = Q(**{f"{study}__in": []})  # nothing, when no part applies
        for part in self.parts(institution=institution, study=study):
            rule |= part
        return rule


NO_REACH = StudyReach(frozenset(), frozenset())


def study_reach(user: Any) -> StudyReach:
    """The institutions and grants behind :func:`visible_studies`, read in one round trip.

    Remembered like the memberships for ``AUTH_CACHE_SECONDS``; a grant given
    or taken away in this process clears the memo at once (receivers in
    ``apps.py``, and the grant managers for ``bulk_create``).
    """
    if not authenticated(user):
        return NO_REACH
    return authcache.remembered(("study_reach", user.pk), lambda: _read_study_reach(user))


def _read_study_reach(user: Any) -> StudyReach:
    # One query for all: the institutions (kind "i"), the granted studies ("s")
    # and the studies granted as priors ("p").
    kind = Value("i", output_field=CharField())
    own_rows = memberships(user).filter(role__in=list(CLINICAL_ROLES)).values_list("institution_id", kind)
    grants = [
        qs.values_list("content_object_id", Value(what, output_field=CharField()))
        for codename, what in ((VIEW_STUDY, "s"), (VIEW_PRIOR, "p"))
        for qs in _grants(user, (codename,))
    ]
    found: dict[str, set[Any]] = {"i": set(), "s": set(), "p": set()}
    for key, what in own_rows.union(*grants, all=True):
        found[what].add(key)
    return StudyReach(frozenset(found["i"]), frozenset(found["s"] | found["p"]), frozenset(found["p"] - found["s"]))


def seen_as_prior(user: Any, study: Study) -> bool:
    """Whether ``user`` sees ``study`` only as a prior of a study they read (read-only; audited as such)."""
    reach = study_reach(user)
    return study.pk in reach.priors and study.institution_id not in reach.institutions


def visible_studies(user: Any) -> QuerySet[Study]:
    """Every study ``user`` may open (the grants as subqueries: usable inside other queries)."""
    if not authenticated(user):
        return Study.objects.none()
    own = institution_ids(user, CLINICAL_ROLES)
    user_grants, group_grants = _grants(user)
    return Study.objects.filter(
        Q(institution_id__in=own)
        | Q(pk__in=user_grants.values("content_object_id"))
        | Q(pk__in=group_grants.values("content_object_id"))
    )


def searchable_studies(user: Any) -> QuerySet[Study]:
    """The same studies as :func:`visible_studies`, for searches over large archives.

    The grants are read first (one small query) and the result filters on
    plain lists, so the planner can walk the (institution, date) indexes in
    order instead of scanning every study against two subqueries.
    """
    return Study.objects.filter(study_reach(user).q())


def access_study(user: Any, *, pk: object = None, uid: str | None = None) -> Study:
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
    except (ValueError, Study.DoesNotExist):
        pass
    raise Http404("No such study")


def can_view_study(user: Any, study: Study) -> bool:
    """Whether ``study`` is among ``visible_studies(user)``, decided cheaply for one row.

    For hot paths (every rendered frame): a study of one of the caller's own
    clinical institutions needs no query beyond the caller's memberships.
    """
    if not authenticated(user):
        return False
    if study.institution_id in institution_ids(user, CLINICAL_ROLES):
        return True
    return visible_studies(user).filter(pk=study.pk).exists()


def visible_series(user: Any) -> QuerySet[Series]:
    return Series.objects.filter(study__in=visible_studies(user))


def visible_instances(user: Any) -> QuerySet[Instance]:
    return Instance.objects.filter(series__study__in=visible_studies(user))
