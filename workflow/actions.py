"""The reading workflow engine: every state change of processes and reading tasks.

Each ``do_*`` runs in one transaction, re-reads the rows it changes with
``SELECT ... FOR UPDATE``, changes state only through
``pacs_cloud.fsm.apply_transition`` and schedules pushes and SLA timers after
commit. A claim is exclusive because the task row is locked and its state
re-checked under the lock; the claim cap holds because the reader's user row
is locked while their held tasks are counted.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from archive.actions import do_mark_study_routed, grant_study_view, revoke_study_view
from archive.models import Study
from archive.priors.selection import select_priors
from pacs_cloud import audit, metering
from pacs_cloud.fsm import apply_transition, record_transition
from pacs_cloud.metering.models import Metric
from pacs_cloud.models import Institution, Membership, Role, User

from . import notify, policy, signals
from .access import Reader, reader
from .facts import study_facts
from .links.access import comparable_patients
from .models import (
    CAPPED_STATES,
    HELD_STATES,
    PRIORITY_RANK,
    TASK_ENDED_STATES,
    TASK_OPEN_STATES,
    PoolMember,
    ProcessInstance,
    RadiologistPool,
    ReadingAgreement,
    ReadingTask,
    RoutingPolicy,
    TaskOffer,
    TaskPrior,
    normalise_priority,
)

log = logging.getLogger(__name__)

ENGINE = "workflow engine"


class TaskRefused(Exception):
    """A task action that is not allowed now; ``code`` tells the API which status to answer."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Routing policies -------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parsed(policy_id: Any, definition_json: str) -> policy.Policy:
    # Versions are immutable, so a parse can be cached by id (the JSON is part
    # of the key only to stay correct if a row is ever edited by hand).
    return policy.parse(json.loads(definition_json))


def parsed_policy(row: RoutingPolicy) -> policy.Policy:
    return _parsed(row.pk, json.dumps(row.definition, sort_keys=True))


def current_policy(institution: Institution | Any) -> RoutingPolicy | None:
    return RoutingPolicy.objects.filter(institution_id=getattr(institution, "pk", institution), is_current=True).first()


def do_save_routing_policy(
    institution: Institution, definition: Any, *, acting_user: Any, name: str = "", note: str = "", request: Any = None
) -> RoutingPolicy:
    """Validate ``definition`` and save it as the institution's next, current version.

    Raises ``policy.PolicyError`` and saves nothing when the definition is
    invalid. Earlier versions stay (running processes point at them).
    """
    policy.validate(definition, institution)
    with transaction.atomic():
        # Lock the institution row so two editors cannot take the same version number.
        Institution.objects.select_for_update().filter(pk=institution.pk).exists()
        previous = RoutingPolicy.objects.filter(institution=institution).order_by("-version").first()
        RoutingPolicy.objects.filter(institution=institution, is_current=True).update(is_current=False)
        row = RoutingPolicy.objects.create(
            institution=institution,
            version=(previous.version + 1) if previous else 1,
            name=name or (previous.name if previous else "Routing policy"),
            definition=definition,
            note=note,
            is_current=True,
            created_by=acting_user if getattr(acting_user, "pk", None) else None,
        )
        audit.record(
            "workflow.routingpolicy.saved",
            request=request,
            actor=acting_user,
            institution=institution,
            object_type="workflow.routingpolicy",
            object_id=row.pk,
            detail={"version": row.version, "note": note},
        )
    return row


# Pools, members and reading agreements --------------------------------------
#
# One validation for the pools page and the REST API: both call these actions
# and show a ``ValidationError`` as a form error (the page) or a 400 (the API).
# The callers have already decided that ``acting_user`` administers the pool's owner.

MAX_CLAIM_CAP = 999
_UNSET: Any = object()


def _claim_cap_value(value: Any) -> int | None:
    """A member's own cap: blank for the pool's, else a whole number from 1 to ``MAX_CLAIM_CAP``."""
    if value is None or value == "":
        return None
    return _pool_cap_value(value)


def _pool_cap_value(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLAIM_CAP:
        raise ValidationError({"claim_cap": f"The claim cap is a whole number from 1 to {MAX_CLAIM_CAP}."})
    return value


def _subspecialties(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError({"subspecialties": "Expected a list of subspecialty names."})
    return sorted({v.strip().lower() for v in value if v.strip()})


def _hospitals(values: Any) -> list[Institution]:
    """Active institutions named by instance or id; an unknown one is an error, not skipped."""
    ids = set()
    for value in values or []:
        try:
            ids.add(value.pk if isinstance(value, Institution) else uuid.UUID(str(value)))
        except ValueError:
            raise ValidationError({"credentialed_for": f"{value!r} is not a hospital."}) from None
    found = list(Institution.objects.filter(pk__in=ids, is_active=True))
    if len(found) != len(ids):
        raise ValidationError({"credentialed_for": "One of these hospitals does not exist or is closed."})
    return found


def _audit_pool(action: str, obj: Any, institution_id: Any, acting_user: Any, request: Any, **detail: Any) -> None:
    audit.record(
        f"workflow.{action}",
        request=request,
        actor=acting_user,
        institution=institution_id,
        object_type=obj._meta.label_lower,
        object_id=obj.pk,
        detail={k: v for k, v in detail.items() if v is not None} or None,
    )


def _saved_uniquely(obj: Any, message: dict[str, str], **save: Any) -> None:
    # The savepoint keeps the caller's transaction usable after a duplicate.
    try:
        with transaction.atomic():
            obj.save(**save)
    except IntegrityError:
        raise ValidationError(message) from None


def do_create_pool(
    owner: Institution,
    *,
    acting_user: Any,
    name: str,
    description: str = "",
    claim_cap: Any = 5,
    is_active: bool = True,
    request: Any = None,
) -> RadiologistPool:
    """A new pool of ``owner``'s radiologists. Raises ``ValidationError``."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A pool needs a name."})
    pool = RadiologistPool(
        owner=owner,
        name=name[:200],
        description=description or "",
        claim_cap=_pool_cap_value(claim_cap),
        is_active=bool(is_active),
    )
    with transaction.atomic():
        _saved_uniquely(pool, {"name": f"{owner} already has a pool called {name}."}, force_insert=True)
        _audit_pool("pool.created", pool, owner.pk, acting_user, request, name=pool.name)
    return pool


def do_change_pool(
    pool: RadiologistPool,
    *,
    acting_user: Any,
    request: Any = None,
    owner: Any = _UNSET,
    name: Any = _UNSET,
    description: Any = _UNSET,
    claim_cap: Any = _UNSET,
    is_active: Any = _UNSET,
) -> RadiologistPool:
    """Change the given fields of a pool; its owner never changes. Raises ``ValidationError``."""
    if owner is not _UNSET and getattr(owner, "pk", owner) != pool.owner_id:
        raise ValidationError({"owner": "A pool cannot change owner."})
    changes: dict[str, Any] = {}
    if name is not _UNSET:
        if not (name or "").strip():
            raise ValidationError({"name": "A pool needs a name."})
        changes["name"] = name.strip()[:200]
    if description is not _UNSET:
        changes["description"] = description or ""
    if claim_cap is not _UNSET:
        changes["claim_cap"] = _pool_cap_value(claim_cap)
    if is_active is not _UNSET:
        changes["is_active"] = bool(is_active)
    with transaction.atomic():
        locked = RadiologistPool.objects.select_for_update().get(pk=pool.pk)
        for field, value in changes.items():
            setattr(locked, field, value)
        _saved_uniquely(
            locked, {"name": f"{locked.owner} already has a pool called {locked.name}."}, update_fields=list(changes)
        )
        _audit_pool(
            "pool.changed", locked, locked.owner_id, acting_user, request, **{k: str(v) for k, v in changes.items()}
        )
    return locked


def do_add_pool_member(
    pool: RadiologistPool,
    user: User | None,
    *,
    acting_user: Any,
    subspecialties: Any = None,
    credentialed_for: Any = (),
    claim_cap: Any = None,
    is_active: bool = True,
    request: Any = None,
) -> PoolMember:
    """Make one of the owner's radiologists a member of ``pool``. Raises ``ValidationError``.

    Refused for anyone not an active radiologist of the pool's owner and for
    someone already in the pool (change that membership instead).
    """
    if (
        user is None
        or not user.is_active
        or not Membership.objects.filter(
            user=user, institution_id=pool.owner_id, role=Role.RADIOLOGIST, is_active=True
        ).exists()
    ):
        raise ValidationError({"user": f"{user or 'That user'} is not a radiologist of {pool.owner}."})
    member = PoolMember(
        pool=pool,
        user=user,
        subspecialties=_subspecialties(subspecialties),
        claim_cap=_claim_cap_value(claim_cap),
        is_active=bool(is_active),
    )
    hospitals = _hospitals(credentialed_for)
    with transaction.atomic():
        _saved_uniquely(member, {"user": f"{user} is already a member of {pool}."}, force_insert=True)
        member.credentialed_for.set(hospitals)
        _audit_pool("pool.member_added", member, pool.owner_id, acting_user, request, user=user.username)
    return member


def do_change_pool_member(
    member: PoolMember,
    *,
    acting_user: Any,
    request: Any = None,
    pool: Any = _UNSET,
    user: Any = _UNSET,
    subspecialties: Any = _UNSET,
    credentialed_for: Any = _UNSET,
    claim_cap: Any = _UNSET,
    is_active: Any = _UNSET,
) -> PoolMember:
    """Change the given fields of a membership. Raises ``ValidationError``."""
    if (pool is not _UNSET and getattr(pool, "pk", pool) != member.pool_id) or (
        user is not _UNSET and getattr(user, "pk", user) != member.user_id
    ):
        raise ValidationError(
            {"user": "A membership cannot move to another pool or person; remove it and add another."}
        )
    changes: dict[str, Any] = {}
    if subspecialties is not _UNSET:
        changes["subspecialties"] = _subspecialties(subspecialties)
    if claim_cap is not _UNSET:
        changes["claim_cap"] = _claim_cap_value(claim_cap)
    if is_active is not _UNSET:
        changes["is_active"] = bool(is_active)
    hospitals = None if credentialed_for is _UNSET else _hospitals(credentialed_for)
    with transaction.atomic():
        locked = PoolMember.objects.select_for_update().select_related("pool", "user").get(pk=member.pk)
        for field, value in changes.items():
            setattr(locked, field, value)
        if changes:
            locked.save(update_fields=list(changes))
        if hospitals is not None:
            locked.credentialed_for.set(hospitals)
        _audit_pool(
            "pool.member_changed",
            locked,
            locked.pool.owner_id,
            acting_user,
            request,
            user=locked.user.username,
            fields=sorted([*changes, *(["credentialed_for"] if hospitals is not None else [])]),
        )
    return locked


def do_remove_pool_member(member: PoolMember, *, acting_user: Any, request: Any = None) -> None:
    """Take a radiologist out of a pool; tasks they hold stay theirs."""
    with transaction.atomic():
        locked = PoolMember.objects.select_for_update().select_related("pool", "user").filter(pk=member.pk).first()
        if locked is None:
            return
        _audit_pool(
            "pool.member_removed", locked, locked.pool.owner_id, acting_user, request, user=locked.user.username
        )
        locked.delete()


def _agreement_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Validated agreement fields from ``values`` (only the keys present)."""
    out: dict[str, Any] = {}
    for key in ("modalities", "body_parts"):
        if key in values:
            value = values[key] if values[key] is not None else []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValidationError({key: "Expected a list of strings."})
            out[key] = [v.strip().upper() for v in value if v.strip()]
    if "sla_minutes" in values:
        errors = policy._Collector()
        out["sla_minutes"] = policy._sla(values["sla_minutes"], "sla_minutes", errors)
        if errors.errors:
            raise ValidationError({"sla_minutes": [m for _, m in errors.errors]})
    for key in ("valid_from", "valid_until", "is_active"):
        if key in values:
            out[key] = values[key]
    if out.get("valid_from") is None and "valid_from" in out:
        raise ValidationError({"valid_from": "An agreement needs a first day."})
    return out


def _check_validity(agreement: ReadingAgreement) -> None:
    if agreement.valid_until is not None and agreement.valid_until < agreement.valid_from:
        raise ValidationError({"valid_until": "The last day comes before the first."})


def do_create_reading_agreement(
    pool: RadiologistPool, hospital: Institution, *, acting_user: Any, request: Any = None, **fields: Any
) -> ReadingAgreement:
    """``hospital`` sends (some of) its studies to ``pool``: ``modalities``, ``body_parts``,
    ``sla_minutes``, ``valid_from``, ``valid_until``, ``is_active``. Raises ``ValidationError``."""
    agreement = ReadingAgreement(pool=pool, hospital=hospital, **_agreement_fields(fields))
    _check_validity(agreement)
    with transaction.atomic():
        _saved_uniquely(agreement, {"hospital": f"{hospital} already has an agreement with {pool}."}, force_insert=True)
        _audit_pool("agreement.created", agreement, pool.owner_id, acting_user, request, hospital=str(hospital.pk))
    return agreement


def do_change_reading_agreement(
    agreement: ReadingAgreement, *, acting_user: Any, request: Any = None, **fields: Any
) -> ReadingAgreement:
    """Change the given terms of an agreement; its pool and hospital stay. Raises ``ValidationError``."""
    for key in ("pool", "hospital"):
        if key in fields and getattr(fields[key], "pk", fields[key]) != getattr(agreement, f"{key}_id"):
            raise ValidationError({key: "An agreement keeps its pool and hospital; end it and make another."})
        fields.pop(key, None)
    changes = _agreement_fields(fields)
    with transaction.atomic():
        locked = ReadingAgreement.objects.select_for_update().select_related("pool").get(pk=agreement.pk)
        for field, value in changes.items():
            setattr(locked, field, value)
        _check_validity(locked)
        locked.save(update_fields=list(changes))
        _audit_pool("agreement.changed", locked, locked.pool.owner_id, acting_user, request, fields=sorted(changes))
    return locked


# Starting a process -----------------------------------------------------------


def do_start_reading_process(
    study: Study, *, at: datetime | None = None, policies: dict[Any, Any] | None = None
) -> ProcessInstance:
    """Route a complete study: start its process, create and offer its tasks.

    Idempotent: a study with a live process keeps it (two workers racing end
    with one process, by the ``process_one_live_per_study`` constraint).
    ``policies`` caches current policies (and first-offer recipients) across one batch.
    """
    with transaction.atomic():
        prepared = _prepare_guarded(study, at=at, policies=policies)
        if isinstance(prepared, ProcessInstance):
            _continue_grown_study(prepared, study)
            return prepared
        _activate_process(prepared)
    return prepared.process


# A task that still has a reader to tell: everything but the finished and the cancelled.
_TASK_OPEN_STATES = [s for s in ReadingTask.State if s not in (ReadingTask.State.FINAL, ReadingTask.State.CANCELLED)]


def _continue_grown_study(process: ProcessInstance, study: Study) -> None:
    """A routed study that received more instances is complete again: its reading continues.

    Its process and tasks stay (the reader keeps a claimed task); each open
    task gets a note in its history, and its reader or the readers it is
    offered to are told the study grew. The study is routed again.
    """
    locked = Study.objects.select_for_update().get(pk=study.pk)
    if locked.state != Study.State.COMPLETE:
        return  # not re-completed (routing again of a study already routed): nothing grew
    tasks = list(process.tasks.select_for_update().filter(state__in=_TASK_OPEN_STATES))
    reason = f"the study grew to {locked.num_instances} instances after it was routed"
    for task in tasks:
        record_transition(
            task,
            task.state,
            task.state,
            "study_grew",
            actor_label=ENGINE,
            institution=task.institution_id,
            reason=reason,
            audit_detail={"study": str(locked.pk), "instances": locked.num_instances},
        )
        readers = [task.claimed_by_id] if task.claimed_by_id else notify.eligible_user_ids(task)
        notify.notify_study_grew(task, readers, locked.num_instances)  # pushed after commit
    do_mark_study_routed(locked, actor_label=ENGINE, reason=f"{reason}; its reading process continues")


def _prepare_guarded(
    study: Study, *, at: datetime | None, policies: dict[Any, Any] | None
) -> _Prepared | ProcessInstance:
    """``_prepare_process`` in a savepoint; a process another worker just created wins."""
    try:
        with transaction.atomic():
            return _prepare_process(study, at=at, policies=policies)
    except IntegrityError:
        return ProcessInstance.objects.exclude(state=ProcessInstance.State.CANCELLED).get(study=study)


@dataclass
class _Prepared:
    process: ProcessInstance
    tasks: list[ReadingTask]
    now: datetime
    reason: str
    recipients: set[int] | None = None


def _prepare_process(
    study: Study, *, at: datetime | None, policies: dict[Any, Any] | None
) -> _Prepared | ProcessInstance:
    """Create the process and its pending tasks and offers; nothing is audited yet.

    Returns the study's live process instead when it has one already.
    """
    existing = ProcessInstance.objects.filter(study=study).exclude(state=ProcessInstance.State.CANCELLED).first()
    if existing is not None:
        return existing
    now = at or timezone.now()
    institution = study.institution
    facts = study_facts(study)
    if policies is None:
        row = current_policy(institution)
    else:
        if institution.pk not in policies:
            policies[institution.pk] = current_policy(institution)
        row = policies[institution.pk]
    plan = policy.resolve(parsed_policy(row) if row else None, institution, facts, now)
    del plan["evaluations"]
    # The caller's savepoint covers these writes (see _prepare_guarded).
    process = ProcessInstance.objects.create(
        institution=institution,
        study=study,
        policy=row,
        rule_index=plan["rule_index"],
        rule_name=plan["rule_name"],
        plan=plan,
        facts=facts.as_dict(),
        order_id=facts.order_id,
        created_at=now,
    )
    kinds = [ReadingTask.Kind.READ]
    if plan["double_reading"]:
        kinds = [ReadingTask.Kind.READ, ReadingTask.Kind.SECOND_READ, ReadingTask.Kind.RECONCILIATION]
    tasks = [
        ReadingTask(
            process=process,
            study=study,
            institution=institution,
            kind=kind,
            hospital_name=institution.name[:200],
            priority=facts.priority,
            priority_rank=PRIORITY_RANK[facts.priority],
            modality=facts.modality[:16],
            body_part=facts.body_part[:64],
            procedure_code=facts.procedure_code[:64],
            procedure=facts.procedure[:200],
            clinical_question=facts.clinical_question,
            final_level=len(plan["steps"]) - 1,
            created_at=now,
        )
        for kind in kinds
    ]
    ReadingTask.objects.bulk_create(tasks)
    offered = [t for t in tasks if t.kind != ReadingTask.Kind.RECONCILIATION]
    for task in offered:
        _create_offers(task, plan["steps"][0], 0)
    reason = f"policy v{row.version} rule {plan['rule_name']!r}" if row else "no policy: own radiologists"
    return _Prepared(process, offered, now, reason, _recipients(offered[0], plan, policies))


def _activate_process(prepared: _Prepared) -> None:
    """Offer the prepared tasks and mark the study routed: the audited half of routing."""
    process = prepared.process
    detail = {"process": str(process.pk), "study": str(process.study_id), "rule": process.rule_name}
    for task in prepared.tasks:
        _transition_offer(task, process.plan, level=0, now=prepared.now, reason=prepared.reason, audit_detail=detail)
    # Every first task has the same recipients: found once, pushed after commit.
    transaction.on_commit(functools.partial(_announce, prepared.tasks, prepared.recipients))
    do_mark_study_routed(process.study, actor_label=ENGINE, reason=prepared.reason)


ROUTE_BATCH = 25


def do_route_studies(studies: list[Study], *, at: datetime | None = None, batch: int = ROUTE_BATCH) -> int:
    """Route many complete studies, ``batch`` to a transaction; returns how many were routed.

    The path for a backlog (the sweep, an edge catching up after an outage):
    one commit per batch instead of per study. Every process of a batch is
    prepared first and offered second, because the first audit event takes the
    audit chain's lock until commit: the lock is then held only for the
    audited transitions, not for reading facts and resolving policies. Each
    study has its own savepoint, so one that fails is logged and left for the
    next sweep without holding up the others.
    """
    routed = 0
    # Policies and recipients are read once per call (a backlog takes seconds).
    policies: dict[Any, Any] = {}
    for start in range(0, len(studies), batch):
        with transaction.atomic():
            prepared: list[_Prepared] = []
            for study in studies[start : start + batch]:
                try:
                    result = _prepare_guarded(study, at=at, policies=policies)
                except Exception:  # one bad study must not stop the backlog
                    log.exception("routing study %s failed; the sweep will retry", study.pk)
                    continue
                if isinstance(result, _Prepared):
                    prepared.append(result)
                else:
                    _continue_grown_study(result, study)
            for item in prepared:
                _activate_process(item)
                routed += 1
    return routed


def _create_offers(task: ReadingTask, step: dict[str, Any], level: int) -> None:
    users = {}
    people = [t["user"] for t in step["offer_to"] if t["kind"] == "person"]
    if people:
        users = dict(User.objects.filter(username__in=people, is_active=True).values_list("username", "pk"))
    offers = []
    for target in step["offer_to"]:
        offer = TaskOffer(task=task, hospital_id=task.institution_id, kind=target["kind"], level=level)
        if target["kind"] == "pool":
            offer.pool_id = target["pool"]
            offer.subspecialty = target.get("subspecialty", "")
        elif target["kind"] == "person":
            if target["user"] not in users:
                continue  # the person left since the policy was saved; the others still get it
            offer.user_id = users[target["user"]]
        offers.append(offer)
    if not offers:
        offers.append(TaskOffer(task=task, hospital_id=task.institution_id, kind=TaskOffer.Kind.OWN, level=level))
    TaskOffer.objects.bulk_create(offers)


def _offer(task: ReadingTask, plan: dict[str, Any], *, level: int, now: datetime, reason: str) -> None:
    _create_offers(task, plan["steps"][level], level)
    _transition_offer(task, plan, level=level, now=now, reason=reason)
    _after_commit_offered(task)


def _transition_offer(
    task: ReadingTask, plan: dict[str, Any], *, level: int, now: datetime, reason: str, audit_detail: dict | None = None
) -> None:
    step = plan["steps"][level]
    apply_transition(
        task,
        "offer",
        actor_label=ENGINE,
        institution=task.institution_id,
        reason=reason,
        update_fields=["offered_at", "due_at", "sla_minutes"],
        now=now,
        sla_minutes=step["sla_minutes"][task.priority],
        audit_detail=audit_detail,
    )


def _announce(tasks: list[ReadingTask], recipients: set[int] | None = None) -> None:
    """Push new offers to everyone they reach and start their SLA timers (after commit)."""
    if not tasks:
        return
    if recipients is None:
        recipients = notify.eligible_user_ids(tasks[0])
    for task in tasks:
        notify.notify_offered(task, recipients)
        _schedule_sla(task)
    signals.tasks_offered.send(
        sender=ReadingTask, task_ids=[t.pk for t in tasks], study_ids=list({t.study_id for t in tasks})
    )


def _recipients(task: ReadingTask, plan: dict[str, Any], cache: dict[Any, Any] | None) -> set[int] | None:
    """Who a first offer reaches; within one batch, studies of one hospital and rule share the answer."""
    if cache is None:
        return None
    key = ("recipients", task.institution_id, json.dumps(plan["steps"][0]["offer_to"], sort_keys=True))
    if key not in cache:
        cache[key] = notify.eligible_user_ids(task)
    return cache[key]


def _after_commit_offered(task: ReadingTask) -> None:
    transaction.on_commit(functools.partial(_announce, [task]))


def _schedule_sla(task: ReadingTask) -> None:
    """The fast path of the SLA timer; the periodic sweep is the guarantee."""
    if not settings.WORKFLOW_SLA_FAST_PATH or task.due_at is None:
        return
    from .tasks import escalate_if_due

    try:
        escalate_if_due.apply_async((str(task.pk),), eta=task.due_at)
    except Exception as exc:  # a lost timer is caught by the sweep
        log.warning("could not schedule the SLA timer of task %s: %s", task.pk, exc)


# Claims -----------------------------------------------------------------------


def _claim_cap(who: Reader, offers: list[TaskOffer]) -> int:
    caps = []
    pool_caps = {pool_id: cap for pool_id, _h, _s, cap in who.pools}
    for offer in offers:
        if offer.kind == TaskOffer.Kind.POOL and offer.pool_id is not None:
            caps.append(pool_caps.get(offer.pool_id, 0))
        else:
            caps.append(settings.WORKFLOW_CLAIM_CAP)
    return max(caps)


def _revoke_unless_needed(user_id: int | None, task: ReadingTask) -> None:
    """Take back the study grant (and its priors') unless another task of the user's still needs it."""
    if user_id is None:
        return
    _revoke_priors(user_id, task)
    keeps = (
        ReadingTask.objects.filter(
            study_id=task.study_id, claimed_by_id=user_id, state__in=[*HELD_STATES, ReadingTask.State.FINAL]
        )
        .exclude(pk=task.pk)
        .exists()
    )
    if not keeps:
        revoke_study_view(task.study_id, user=user_id)


# Relevant priors go with the task's grant, read-only: granted at the claim,
# taken back with the study's grant.


def _grant_priors(task: ReadingTask, user: Any) -> list[Any]:
    """Grant ``user`` the relevant priors of ``task``'s study, as priors; their ids (recorded on the task).

    Priors of the same person at another hospital count too while a patient
    link and the patient's consent say so (``workflow.links``).
    """
    study = Study.objects.get(pk=task.study_id)
    priors = select_priors(study, linked_patients=comparable_patients(study))
    TaskPrior.objects.filter(task=task).delete()
    TaskPrior.objects.bulk_create([TaskPrior(task=task, study=prior) for prior in priors])
    for prior in priors:
        grant_study_view(prior, user=user, as_prior=True)
    return [prior.pk for prior in priors]


def _revoke_priors(user_id: int, task: ReadingTask) -> None:
    still_needed = set(
        TaskPrior.objects.filter(task__claimed_by_id=user_id, task__state__in=[*HELD_STATES, ReadingTask.State.FINAL])
        .exclude(task_id=task.pk)
        .values_list("study_id", flat=True)
    )
    for study_id in TaskPrior.objects.filter(task=task).values_list("study_id", flat=True):
        if study_id not in still_needed:
            revoke_study_view(study_id, user=user_id, as_prior=True)
    TaskPrior.objects.filter(task=task).delete()


def do_claim_reading_task(task: ReadingTask, *, acting_user: Any, request: Any = None) -> ReadingTask:
    """Give ``task`` to ``acting_user`` exclusively and grant them the study.

    Refused (``TaskRefused``) when the task is not open, not offered to them,
    they hold their cap already, or they hold the other read of a double read.
    """
    try:
        locked = _claim(task, acting_user)
    except TaskRefused as refusal:
        # Recorded after the refused transaction rolled back, so the denial stays on record.
        _audit_refusal("claim", task, acting_user, refusal, request)
        raise
    # Offers stay active while the task is held, so they still name everyone
    # whose list must drop it; read after commit, outside the locks.
    notify.notify_withdrawn(locked, notify.eligible_user_ids(locked) - {acting_user.pk}, "claimed")
    notify.notify_mine(locked, acting_user.pk)
    return locked


def _audit_refusal(what: str, task: ReadingTask, acting_user: Any, refusal: TaskRefused, request: Any) -> None:
    audit.record(
        f"workflow.readingtask.{what}_refused",
        request=request,
        actor=acting_user,
        # A caller may pass a bare ``ReadingTask(pk=...)``.
        institution=task.institution_id
        or ReadingTask.objects.filter(pk=task.pk).values_list("institution_id", flat=True).first(),
        object_type="workflow.readingtask",
        object_id=task.pk,
        outcome="denied",
        detail={"code": refusal.code, "reason": refusal.message},
    )


def _claim(task: ReadingTask, acting_user: Any) -> ReadingTask:
    who = reader(acting_user)
    now = timezone.now()
    with transaction.atomic():
        try:
            # NOWAIT: when another reader holds the row they are claiming it
            # right now; answer at once instead of queueing behind them.
            locked = ReadingTask.objects.select_for_update(nowait=True).get(pk=task.pk)
        except OperationalError:
            raise TaskRefused("Someone else is claiming this task right now.", "not_open") from None
        if locked.state not in TASK_OPEN_STATES:
            raise TaskRefused("This task is no longer open: someone else has claimed it or it has ended.", "not_open")
        offers = list(TaskOffer.objects.filter(who.offer_q(), task_id=locked.pk))
        if not offers:
            raise TaskRefused("This task is not offered to you.", "not_offered")
        # Lock this reader's user row so two claims at once cannot both pass
        # the cap. The count must be a later statement than the lock: under
        # READ COMMITTED a statement that waited for a lock still reads the
        # snapshot it started with, and would miss the claim it waited for.
        list(User.objects.select_for_update().filter(pk=acting_user.pk).values_list("pk"))
        mine = ReadingTask.objects.filter(claimed_by=acting_user).aggregate(
            held=Count("pk", filter=Q(state__in=CAPPED_STATES)),
            other_read=Count(
                "pk",
                filter=Q(process_id=locked.process_id, kind__in=[ReadingTask.Kind.READ, ReadingTask.Kind.SECOND_READ])
                & ~Q(pk=locked.pk),
            ),
        )
        held, holds_other_read = mine["held"], mine["other_read"] > 0
        cap = _claim_cap(who, offers)
        if held >= cap:
            raise TaskRefused(f"You already hold {held} tasks; the most you may hold at once is {cap}.", "cap_reached")
        if holds_other_read and locked.kind != ReadingTask.Kind.RECONCILIATION:
            raise TaskRefused(
                "Double reading needs two different radiologists; you hold the other read.", "same_reader"
            )
        # Grant first, transition last: the audit append (a global lock) is then
        # held for the shortest time before commit.
        grant_study_view(locked.study_id, user=acting_user)
        priors = _grant_priors(locked, acting_user)
        apply_transition(
            locked,
            "claim",
            actor=acting_user,
            institution=locked.institution_id,
            audit_detail={"priors": [str(pk) for pk in priors]} if priors else None,
            update_fields=["claimed_by", "claimed_at", "last_activity_at"],
            user=acting_user,
            now=now,
        )
    return locked


def _holder_action(task: ReadingTask, acting_user: Any, method: str, *, reason: str = "", **kwargs: Any) -> ReadingTask:
    with transaction.atomic():
        locked = ReadingTask.objects.select_for_update().get(pk=task.pk)
        if locked.claimed_by_id != acting_user.pk or locked.state not in HELD_STATES:
            raise TaskRefused("You do not hold this task.", "not_holder")
        try:
            apply_transition(
                locked,
                method,
                actor=acting_user,
                institution=locked.institution_id,
                reason=reason,
                update_fields=["last_activity_at", "finished_at", "claimed_by", "claimed_at"],
                **kwargs,
            )
        except TransitionNotAllowed:
            raise TaskRefused(f"A task that is {locked.state} cannot do that.", "bad_state") from None
    return locked


def do_release_reading_task(task: ReadingTask, *, acting_user: Any, reason: str = "") -> ReadingTask:
    """The holder gives the task back: it is open again to the same recipients."""
    with transaction.atomic():
        released = _holder_action(task, acting_user, "release", reason=reason)
        _revoke_unless_needed(acting_user.pk, released)
        _after_commit_offered(released)
    notify.notify_mine(released, acting_user.pk)
    return released


def do_mark_task_drafting(task: ReadingTask, *, acting_user: Any) -> ReadingTask:
    """The holder started a report draft (called by the reports app)."""
    return _holder_action(task, acting_user, "start_draft", now=timezone.now())


def do_mark_task_preliminary(task: ReadingTask, *, acting_user: Any, reason: str = "") -> ReadingTask:
    """The holder issued a preliminary report (called by the reports app)."""
    return _holder_action(task, acting_user, "issue_preliminary", reason=reason, now=timezone.now())


def do_finalize_task(task: ReadingTask, *, acting_user: Any, reason: str = "") -> ReadingTask:
    """The holder signed the final report (called by the reports app).

    The signer keeps read access to the study. Finishing both reads of a double
    read offers the reconciliation step; finishing every task completes the
    process.
    """
    now = timezone.now()
    with transaction.atomic():
        done = _holder_action(task, acting_user, "finalize", reason=reason, now=now)
        _meter_pool_reading(done, acting_user)
        _advance_process(done.process_id, now)
    notify.notify_mine(done, acting_user.pk)
    return done


def _meter_pool_reading(task: ReadingTask, reader: Any) -> None:
    """A task read through another institution's pool: the hospital buys the reading, the pool's owner sells it."""
    seller = (
        TaskOffer.objects.filter(
            task=task,
            kind=TaskOffer.Kind.POOL,
            pool__members__user_id=reader.pk,
            pool__members__is_active=True,
        )
        .exclude(pool__owner_id=task.institution_id)
        .values_list("pool__owner_id", flat=True)
        .first()
    )
    if seller is None:
        return
    metering.record_usage(task.institution_id, Metric.POOL_READINGS_BOUGHT, dimension=str(seller))
    metering.record_usage(seller, Metric.POOL_READINGS_SOLD, dimension=str(task.institution_id))


def _advance_process(process_id: Any, now: datetime) -> None:
    process = ProcessInstance.objects.select_for_update().get(pk=process_id)
    tasks = list(ReadingTask.objects.select_for_update().filter(process=process))
    reads = [t for t in tasks if t.kind != ReadingTask.Kind.RECONCILIATION]
    for task in tasks:
        if (
            task.kind == ReadingTask.Kind.RECONCILIATION
            and task.state == ReadingTask.State.PENDING
            and all(t.state == ReadingTask.State.FINAL for t in reads)
        ):
            _offer(task, process.plan, level=0, now=now, reason="both reads are final")
    if process.state == ProcessInstance.State.RUNNING and all(t.state in TASK_ENDED_STATES for t in tasks):
        process.state = ProcessInstance.State.COMPLETED
        process.ended_at = now
        process.save(update_fields=["state", "ended_at"])
        record_transition(
            process,
            ProcessInstance.State.RUNNING,
            process.state,
            "complete",
            actor_label=ENGINE,
            institution=process.institution_id,
            reason="every task ended",
        )


def do_touch_task(task: ReadingTask, *, acting_user: Any, request: Any = None, what: str = "open") -> None:
    """The holder (or a hospital clinician) opened the study: audit it; a holder's claim stays alive."""
    study = task.study
    with transaction.atomic():
        if task.claimed_by_id == acting_user.pk:
            ReadingTask.objects.filter(pk=task.pk, claimed_by=acting_user).update(last_activity_at=timezone.now())
        audit.record(
            f"workflow.readingtask.{what}",
            request=request,
            actor=acting_user,
            institution=task.institution_id,
            object_type="archive.study",
            object_id=study.pk,
            patient_id=study.patient.patient_id,
            detail={"task": str(task.pk)},
        )


# Sweeps and timers -----------------------------------------------------------


def do_expire_idle_claims(*, now: datetime | None = None) -> int:
    """Give back claims nobody has worked on for ``WORKFLOW_CLAIM_IDLE_MINUTES``; safe to run twice."""
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.WORKFLOW_CLAIM_IDLE_MINUTES)
    expired = 0
    candidates = ReadingTask.objects.filter(state=ReadingTask.State.CLAIMED, last_activity_at__lt=cutoff)
    for pk in candidates.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            locked = ReadingTask.objects.select_for_update(skip_locked=True).filter(pk=pk).first()
            if (
                locked is None
                or locked.state != ReadingTask.State.CLAIMED
                or not locked.last_activity_at
                or locked.last_activity_at >= cutoff
            ):
                continue
            holder = locked.claimed_by_id
            apply_transition(
                locked,
                "expire",
                actor_label="idle-claim sweep",
                institution=locked.institution_id,
                reason=f"idle for {settings.WORKFLOW_CLAIM_IDLE_MINUTES} minutes",
                update_fields=["claimed_by", "claimed_at", "last_activity_at"],
            )
            _revoke_unless_needed(holder, locked)
            _after_commit_offered(locked)
            notify.notify_mine(locked, holder)
            expired += 1
    return expired


def do_escalate_reading_task(task: ReadingTask | Any, *, now: datetime | None = None) -> bool:
    """Escalate an open task past its SLA to the next step of its chain; safe to run twice.

    A task at the end of its chain, or held by a reader, is only flagged as
    breached (once). Returns True when the task was escalated.
    """
    now = now or timezone.now()
    pk = getattr(task, "pk", task)
    with transaction.atomic():
        locked = ReadingTask.objects.select_for_update().select_related("process", "institution").filter(pk=pk).first()
        if locked is None or locked.due_at is None or locked.due_at > now or locked.state in TASK_ENDED_STATES:
            return False
        if locked.state not in TASK_OPEN_STATES or locked.escalation_level >= locked.final_level:
            if locked.breached_at is None:
                locked.breached_at = now
                locked.save(update_fields=["breached_at"])
                audit.record(
                    "workflow.readingtask.sla_breached",
                    actor_label="SLA timer",
                    institution=locked.institution_id,
                    object_type="workflow.readingtask",
                    object_id=locked.pk,
                    detail={"due_at": locked.due_at.isoformat(), "state": locked.state},
                )
                watchers = notify.eligible_user_ids(locked) | (
                    {locked.claimed_by_id} if locked.claimed_by_id else set()
                )
                notify.notify_updated(locked, watchers)
            return False
        level = locked.escalation_level + 1
        step = locked.process.plan["steps"][level]
        before = notify.eligible_user_ids(locked)
        TaskOffer.objects.filter(task=locked, is_active=True).update(is_active=False)
        _create_offers(locked, step, level)
        apply_transition(
            locked,
            "escalate",
            actor_label="SLA timer",
            institution=locked.institution_id,
            reason=f"SLA of {locked.sla_minutes} minutes breached; offered to level {level}",
            update_fields=["breached_at", "escalation_level", "sla_minutes", "offered_at", "due_at"],
            now=now,
            level=level,
            sla_minutes=step["sla_minutes"][locked.priority],
        )
        after = notify.eligible_user_ids(locked)
        notify.notify_withdrawn(locked, before - after, "escalated")
        _after_commit_offered(locked)
    return True


def do_sweep_reading_tasks(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic guarantee behind every timer: escalations, breaches, idle claims, unrouted studies."""
    now = now or timezone.now()
    escalated = 0
    due = ReadingTask.objects.filter(due_at__lte=now, state__in=[*TASK_OPEN_STATES, *HELD_STATES]).filter(
        Q(state__in=TASK_OPEN_STATES, escalation_level__lt=F("final_level")) | Q(breached_at__isnull=True)
    )
    for pk in due.values_list("pk", flat=True)[:1000]:
        escalated += do_escalate_reading_task(pk, now=now)
    expired = do_expire_idle_claims(now=now)
    grace = now - timedelta(seconds=settings.WORKFLOW_ROUTE_GRACE_SECONDS)
    unrouted = Study.objects.filter(state=Study.State.COMPLETE, completed_at__lt=grace).exclude(
        reading_processes__state__in=[ProcessInstance.State.RUNNING, ProcessInstance.State.COMPLETED]
    )
    routed = do_route_studies(list(unrouted.select_related("institution", "patient")[:500]), at=now)
    return {"escalated": escalated, "expired": expired, "routed": routed}


# Administration: reassignment, cancellation, priority changes -----------------


def reads_for(user: User, institution_id: Any) -> bool:
    """``user`` may read for the hospital: its radiologist, or a credentialled member of a contracted pool."""
    if Membership.objects.filter(
        user=user, institution_id=institution_id, role=Role.RADIOLOGIST, is_active=True
    ).exists():
        return True
    pools = [
        a.pool_id
        for a in ReadingAgreement.objects.filter(hospital_id=institution_id).select_related("pool")
        if a.in_force()
    ]
    return PoolMember.objects.filter(
        user=user, is_active=True, pool_id__in=pools, credentialed_for=institution_id
    ).exists()


def do_reassign_reading_task(
    task: ReadingTask, *, acting_user: Any, to_user: User, reason: str = "", request: Any = None
) -> ReadingTask:
    """An administrator of the hospital offers the task to one named radiologist instead."""
    if not to_user.is_active or not reads_for(to_user, task.institution_id):
        raise TaskRefused(f"{to_user} does not read for this hospital.", "bad_target")
    with transaction.atomic():
        locked = ReadingTask.objects.select_for_update().select_related("institution").get(pk=task.pk)
        holder = locked.claimed_by_id
        before = notify.eligible_user_ids(locked)
        try:
            apply_transition(
                locked,
                "reassign",
                actor=acting_user,
                institution=locked.institution_id,
                reason=reason or f"reassigned to {to_user.username}",
                update_fields=["claimed_by", "claimed_at", "last_activity_at", "offered_at"],
                now=timezone.now(),
            )
        except TransitionNotAllowed:
            raise TaskRefused(f"A task that is {locked.state} cannot be reassigned.", "bad_state") from None
        TaskOffer.objects.filter(task=locked, is_active=True).update(is_active=False)
        TaskOffer.objects.create(
            task=locked,
            hospital_id=locked.institution_id,
            kind=TaskOffer.Kind.PERSON,
            user=to_user,
            level=locked.escalation_level,
        )
        _revoke_unless_needed(holder, locked)
        notify.notify_withdrawn(locked, (before | {holder} if holder else before) - {to_user.pk}, "reassigned")
        notify.notify_mine(locked, holder)
        _after_commit_offered(locked)
    return locked


def do_cancel_process(process: ProcessInstance, *, actor: Any = None, actor_label: str = "", reason: str = "") -> int:
    """Cancel every unfinished task of a process (the order was cancelled); returns how many."""
    now = timezone.now()
    cancelled = 0
    with transaction.atomic():
        locked = ProcessInstance.objects.select_for_update().get(pk=process.pk)
        if locked.state != ProcessInstance.State.RUNNING:
            return 0
        for task in (
            ReadingTask.objects.select_for_update()
            .select_related("institution")
            .filter(process=locked)
            .exclude(state__in=TASK_ENDED_STATES)
        ):
            holder = task.claimed_by_id
            before = notify.eligible_user_ids(task)
            apply_transition(
                task,
                "cancel",
                actor=actor,
                actor_label=actor_label,
                institution=task.institution_id,
                reason=reason,
                update_fields=["claimed_by", "claimed_at", "last_activity_at", "finished_at"],
                now=now,
            )
            TaskOffer.objects.filter(task=task, is_active=True).update(is_active=False)
            _revoke_unless_needed(holder, task)
            notify.notify_withdrawn(task, before | ({holder} if holder else set()), "cancelled")
            cancelled += 1
        locked.state = ProcessInstance.State.CANCELLED
        locked.ended_at = now
        locked.save(update_fields=["state", "ended_at"])
        record_transition(
            locked,
            ProcessInstance.State.RUNNING,
            locked.state,
            "cancel",
            actor=actor,
            actor_label=actor_label,
            institution=locked.institution_id,
            reason=reason,
            audit_detail={"tasks": cancelled},
        )
    return cancelled


def do_retime_process(process: ProcessInstance, *, priority: Any, actor_label: str = "", reason: str = "") -> int:
    """Apply a new priority to a process's unfinished tasks and re-time their SLAs from their offer time."""
    new = normalise_priority(priority)
    changed = 0
    with transaction.atomic():
        for task in (
            ReadingTask.objects.select_for_update()
            .select_related("institution")
            .filter(process=process)
            .exclude(state__in=TASK_ENDED_STATES)
        ):
            if task.priority == new:
                continue
            old_due = task.due_at
            step = process.plan["steps"][min(task.escalation_level, len(process.plan["steps"]) - 1)]
            task.priority = new
            task.priority_rank = PRIORITY_RANK[new]
            task.sla_minutes = step["sla_minutes"][new]
            if task.offered_at is not None:
                task.due_at = task.offered_at + timedelta(minutes=task.sla_minutes)
            task.save(update_fields=["priority", "priority_rank", "sla_minutes", "due_at"])
            audit.record(
                "workflow.readingtask.retimed",
                actor_label=actor_label or ENGINE,
                institution=task.institution_id,
                object_type="workflow.readingtask",
                object_id=task.pk,
                detail={
                    "priority": new,
                    "reason": reason,
                    "old_due_at": old_due.isoformat() if old_due else None,
                    "due_at": task.due_at.isoformat() if task.due_at else None,
                },
            )
            watchers = notify.eligible_user_ids(task) | ({task.claimed_by_id} if task.claimed_by_id else set())
            notify.notify_updated(task, watchers)
            transaction.on_commit(functools.partial(_schedule_sla, task))
            changed += 1
    return changed


def processes_for_order(order: Any) -> list[ProcessInstance]:
    """Live processes of the studies an order was read for (by order id, else accession number)."""
    running = ProcessInstance.objects.filter(state=ProcessInstance.State.RUNNING)
    found = list(running.filter(order_id=str(order.pk)))
    accession = getattr(order, "accession_number", "")
    institution_id = getattr(order, "institution_id", None)
    if not found and accession and institution_id:
        found = list(running.filter(institution_id=institution_id, study__accession_number=accession))
    return found
