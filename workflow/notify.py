"""Live worklist pushes (``pacs_cloud.push``), sent after commit to each reader's user group.

Topics the worklist page listens to:

* ``workflow.task.offered`` — a task is (again) open to you: what you need to
  choose it, never the patient's identity;
* ``workflow.task.withdrawn`` — remove it from your list (someone claimed it,
  it was cancelled, escalated or reassigned elsewhere);
* ``workflow.task.updated`` — its priority or SLA changed;
* ``workflow.task.mine`` — a task you hold changed state;
* ``workflow.task.study_grew`` — the study of a task you hold or are offered
  received more instances after it was routed: open it again to see them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pacs_cloud.models import Membership, Role
from pacs_cloud.push import notify_many, user_group

from .models import PoolMember, ReadingTask, TaskOffer


def eligible_user_ids(task: ReadingTask) -> set[int]:
    """Users the task's active offers reach right now."""
    ids: set[int] = set()
    offers = list(
        TaskOffer.objects.filter(task_id=task.pk, is_active=True).values_list(
            "kind", "pool_id", "user_id", "subspecialty"
        )
    )
    if any(kind == TaskOffer.Kind.OWN for kind, *_ in offers):
        ids.update(
            Membership.objects.filter(
                institution_id=task.institution_id, role=Role.RADIOLOGIST, is_active=True, user__is_active=True
            ).values_list("user_id", flat=True)
        )
    pools = {(pool_id, sub) for kind, pool_id, _, sub in offers if kind == TaskOffer.Kind.POOL}
    if pools:
        members = PoolMember.objects.filter(
            pool_id__in={p for p, _ in pools},
            is_active=True,
            user__is_active=True,
            credentialed_for=task.institution_id,
        ).values_list("pool_id", "user_id", "subspecialties")
        for pool_id, user_id, subspecialties in members:
            wanted = {sub for p, sub in pools if p == pool_id}
            if "" in wanted or wanted & {s.lower() for s in subspecialties}:
                ids.add(user_id)
    ids.update(user_id for kind, _, user_id, _ in offers if kind == TaskOffer.Kind.PERSON and user_id)
    return ids


def offer_summary(task: ReadingTask) -> dict[str, Any]:
    """What a reader needs to choose a task; deliberately without patient identity."""
    return {
        "id": str(task.pk),
        "kind": task.kind,
        "state": task.state,
        "hospital": task.institution.name,
        "hospital_id": str(task.institution_id),
        "modality": task.modality,
        "body_part": task.body_part,
        "procedure": task.procedure,
        "priority": task.priority,
        "due_at": task.due_at.isoformat() if task.due_at else None,
        "clinical_question": task.clinical_question,
    }


def _groups(user_ids: Iterable[int | None]) -> list[str]:
    return [user_group(pk) for pk in sorted({pk for pk in user_ids if pk is not None})]


def notify_offered(task: ReadingTask, user_ids: Iterable[int]) -> None:
    notify_many(_groups(user_ids), "workflow.task.offered", offer_summary(task))


def notify_withdrawn(task: ReadingTask, user_ids: Iterable[int], reason: str) -> None:
    notify_many(_groups(user_ids), "workflow.task.withdrawn", {"id": str(task.pk), "reason": reason})


def notify_updated(task: ReadingTask, user_ids: Iterable[int | None]) -> None:
    notify_many(_groups(user_ids), "workflow.task.updated", offer_summary(task))


def notify_mine(task: ReadingTask, user_id: int | None) -> None:
    notify_many(_groups([user_id]), "workflow.task.mine", {"id": str(task.pk), "state": task.state})


def notify_study_grew(task: ReadingTask, user_ids: Iterable[int | None], instances: int) -> None:
    notify_many(
        _groups(user_ids),
        "workflow.task.study_grew",
        {"id": str(task.pk), "state": task.state, "instances": instances},
    )
