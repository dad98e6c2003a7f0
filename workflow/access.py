"""Who may see, claim and manage reading tasks, pools and policies.

Built on ``pacs_cloud.access``'s roles. A radiologist sees a task when it is
offered to them (as one of the hospital's radiologists, a credentialled pool member
or by name), when they hold it, or when they finished it; the hospital's own
clinical staff and administrators see all of its tasks. Patient identity is
shown only to those who may open the study (``can_see_patient``): a foreign
reader gets it with the claim. ``access_*`` raise ``Http404`` alike for
missing and not-yours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404

from pacs_cloud import access
from pacs_cloud.models import CLINICAL_ROLES, Role

from .models import (
    HELD_STATES,
    TASK_OPEN_STATES,
    PoolMember,
    RadiologistPool,
    ReadingTask,
    RoutingPolicy,
    TaskOffer,
)


@dataclass
class Reader:
    """What one user may read: own hospitals, and pool memberships with credentials."""

    user: Any
    own: set[UUID] = field(default_factory=set)
    pools: list[tuple[UUID, set[UUID], set[str], int]] = field(default_factory=list)
    # Institutions where the user holds a clinical role / a clinical or administrator role.
    clinical: set[UUID] = field(default_factory=set)
    monitored: set[UUID] = field(default_factory=set)

    @property
    def has_person_offers(self) -> bool:
        # Offers by name may come from any hospital the person reads for.
        return TaskOffer.objects.filter(kind=TaskOffer.Kind.PERSON, user_id=self.user.pk, is_active=True).exists()

    def hospitals(self) -> set[UUID]:
        return set(self.own) | {h for _, hospitals, _, _ in self.pools for h in hospitals}

    def offer_q(self, prefix: str = "") -> Q:
        """Active offers that include this reader (``prefix`` for lookups across a relation)."""
        p = prefix
        q = Q(**{f"{p}kind": TaskOffer.Kind.PERSON, f"{p}user_id": self.user.pk})
        if self.own:
            q |= Q(**{f"{p}kind": TaskOffer.Kind.OWN, f"{p}hospital_id__in": self.own})
        for pool_id, hospitals, subspecialties, _cap in self.pools:
            if hospitals:
                q |= Q(
                    Q(**{f"{p}kind": TaskOffer.Kind.POOL, f"{p}pool_id": pool_id, f"{p}hospital_id__in": hospitals})
                    & (Q(**{f"{p}subspecialty": ""}) | Q(**{f"{p}subspecialty__in": subspecialties}))
                )
        return q & Q(**{f"{p}is_active": True})


def reader(user: Any) -> Reader:
    if not access.authenticated(user):
        return Reader(user=user)
    result = Reader(user=user)
    for institution_id, role in access.memberships(user).values_list("institution_id", "role"):
        if role == Role.RADIOLOGIST:
            result.own.add(institution_id)
        if role in CLINICAL_ROLES:
            result.clinical.add(institution_id)
        if role in CLINICAL_ROLES or role == Role.INSTITUTION_ADMIN:
            result.monitored.add(institution_id)
    # One query for every membership with its credentials: the claim path runs it.
    rows = PoolMember.credentialed_for.through.objects.filter(
        poolmember__user=user,
        poolmember__is_active=True,
        poolmember__pool__is_active=True,
        institution__is_active=True,
    ).values_list(
        "poolmember__pool_id",
        "institution_id",
        "poolmember__subspecialties",
        "poolmember__claim_cap",
        "poolmember__pool__claim_cap",
    )
    pools: dict[Any, tuple[Any, set[UUID], set[str], int]] = {}
    for pool_id, hospital_id, subspecialties, own_cap, pool_cap in rows:
        entry = pools.setdefault(
            pool_id, (pool_id, set(), {s.lower() for s in subspecialties}, own_cap if own_cap is not None else pool_cap)
        )
        entry[1].add(hospital_id)
    result.pools = list(pools.values())
    return result


def offered_tasks(user: Any, who: Reader | None = None) -> QuerySet[ReadingTask]:
    """Open tasks offered to ``user`` right now."""
    who = who or reader(user)
    offers = TaskOffer.objects.filter(who.offer_q(), task_id=OuterRef("pk"))
    # An offer's hospital is its task's: naming the reader's hospitals lets the
    # database start from those hospitals' open tasks.
    hospitals = who.hospitals()
    qs = ReadingTask.objects.filter(state__in=TASK_OPEN_STATES).filter(Exists(offers))
    return qs if who.has_person_offers else qs.filter(institution_id__in=hospitals)


def held_tasks(user: Any) -> QuerySet[ReadingTask]:
    """The tasks ``user`` holds now (claimed and not yet signed): the one meaning of "held"."""
    if not access.authenticated(user):
        return ReadingTask.objects.none()
    return ReadingTask.objects.filter(claimed_by=user, state__in=HELD_STATES)


def finished_tasks(user: Any) -> QuerySet[ReadingTask]:
    return ReadingTask.objects.filter(claimed_by=user, state=ReadingTask.State.FINAL)


def monitored_institutions(user: Any) -> set[UUID]:
    """Hospitals whose whole task list ``user`` may see (clinical staff and administrators)."""
    return access.institution_ids(user, [*CLINICAL_ROLES, Role.INSTITUTION_ADMIN])


def visible_tasks(user: Any, who: Reader | None = None) -> QuerySet[ReadingTask]:
    if not access.authenticated(user):
        return ReadingTask.objects.none()
    who = who or reader(user)
    offers = TaskOffer.objects.filter(who.offer_q(), task_id=OuterRef("pk"))
    return ReadingTask.objects.filter(
        Q(institution_id__in=who.monitored) | Q(claimed_by=user) | (Q(state__in=TASK_OPEN_STATES) & Exists(offers))
    )


def access_task(user: Any, pk: object, *, to_claim: bool = False) -> ReadingTask:
    """A visible task; with ``to_claim`` also one offered to ``user`` that someone else has
    just claimed, so a reader who lost the race is told so (409) instead of 404."""
    try:
        key = UUID(str(pk))
        qs = visible_tasks(user)
        if to_claim:
            offers = TaskOffer.objects.filter(reader(user).offer_q(), task_id=OuterRef("pk"))
            qs = ReadingTask.objects.filter(Q(pk__in=qs.values("pk")) | Exists(offers))
        return qs.select_related("institution", "study").get(pk=key)
    except (ValueError, ReadingTask.DoesNotExist):
        raise Http404("No such reading task") from None


def can_see_patient(user: Any, task: ReadingTask, clinical: set[UUID] | None = None) -> bool:
    """Identity and images: the hospital's clinical staff, or the task's holder or signer."""
    if clinical is None:
        clinical = access.institution_ids(user, CLINICAL_ROLES)
    if task.institution_id in clinical:
        return True
    return task.claimed_by_id == getattr(user, "pk", None) and task.state in (*HELD_STATES, ReadingTask.State.FINAL)


def can_manage_tasks(user: Any, task: ReadingTask) -> bool:
    """Reassign or cancel: the hospital's administrators."""
    return access.has_role(user, task.institution_id, Role.INSTITUTION_ADMIN)


# Pools and policies ---------------------------------------------------------


def admin_institutions(user: Any) -> set[UUID]:
    return access.institution_ids(user, [Role.INSTITUTION_ADMIN])


def visible_pools(user: Any) -> QuerySet[RadiologistPool]:
    """Pools the caller manages, belongs to, or whose agreements cover their hospital."""
    if not access.authenticated(user):
        return RadiologistPool.objects.none()
    mine = access.institution_ids(user)
    return RadiologistPool.objects.filter(
        Q(owner_id__in=mine) | Q(members__user=user, members__is_active=True) | Q(agreements__hospital_id__in=mine)
    ).distinct()


def access_pool(user: Any, pk: object, *, manage: bool = False) -> RadiologistPool:
    qs = RadiologistPool.objects.filter(owner_id__in=admin_institutions(user)) if manage else visible_pools(user)
    try:
        return qs.get(pk=UUID(str(pk)))
    except (ValueError, RadiologistPool.DoesNotExist):
        raise Http404("No such pool") from None


def visible_policies(user: Any) -> QuerySet[RoutingPolicy]:
    """Routing policies of hospitals where the caller is an administrator or radiologist."""
    ids = access.institution_ids(user, [Role.INSTITUTION_ADMIN, Role.RADIOLOGIST])
    return RoutingPolicy.objects.filter(institution_id__in=ids)


def access_policy(user: Any, pk: object) -> RoutingPolicy:
    try:
        return visible_policies(user).select_related("institution").get(pk=UUID(str(pk)))
    except (ValueError, RoutingPolicy.DoesNotExist):
        raise Http404("No such routing policy") from None
