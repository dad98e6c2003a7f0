"""Keeping the summary rows up to date, and rebuilding them.

Receivers of signals the other apps already send: the archive's
``study_received``, the worklist's ``order_linked`` and
``order_priority_changed``, and ``pacs_cloud.fsm.transition_recorded`` for
every state change (a study completed, a task offered, claimed, escalated or
signed). Each runs in a savepoint and logs instead of raising: a figure may
lag (``manage.py rebuild_statistics`` repairs it), a clinical action must not
fail for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.db import IntegrityError, transaction
from django.db.models import Case, DateTimeField, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from archive.models import EdgeGateway, Series, Study
from pacs_cloud.models import Institution
from worklist.models import Order

from ..models import PoolMember, ReadingTask, TaskOffer
from . import rollups
from .models import EdgeBacklogSample, StudyStat

log = logging.getLogger(__name__)

_ZONES: dict[str, ZoneInfo] = {}


def zone(name: str) -> ZoneInfo:
    if name not in _ZONES:
        try:
            _ZONES[name] = ZoneInfo(name or "UTC")
        except (ValueError, KeyError, OSError):
            _ZONES[name] = ZoneInfo("UTC")
    return _ZONES[name]


def local_day(moment: datetime, time_zone: str) -> date:
    return moment.astimezone(zone(time_zone)).date()


def _first_modality(modalities: str) -> str:
    # Modalities in Study lists the report's SR too; an image modality speaks for the study.
    parts = [m for m in modalities.split("\\") if m]
    images = [m for m in parts if m not in {"SR", "PR", "KO", "DOC"}]
    return (images or parts or [""])[0][:16]


def _order_of(study_id: Any) -> Order | None:
    orders = Order.objects.filter(study_id=study_id).exclude(state=Order.State.CANCELLED)
    return orders.select_related("procedure", "station").order_by("created_at").first()


def _order_fields(order: Order) -> dict[str, Any]:
    return {
        "registered_at": order.created_at,
        "station": order.station.name[:64],
        "priority": order.priority,
        "modality": order.modality[:16],
        "body_part": order.procedure.body_part[:64],
    }


def _new_row(study: Study) -> StudyStat:
    time_zone = Institution.objects.filter(pk=study.institution_id).values_list("time_zone", flat=True).first()
    body_part = (
        Series.objects.filter(study_id=study.pk).exclude(body_part="").values_list("body_part", flat=True).first() or ""
    )
    row = StudyStat(
        study_id=study.pk,
        institution_id=study.institution_id,
        day=local_day(study.received_at, time_zone or "UTC"),
        modality=_first_modality(study.modalities),
        body_part=body_part[:64],
        images_at=study.received_at,
        completed_at=study.completed_at,
    )
    order = _order_of(study.pk)
    if order is not None:
        for name, value in _order_fields(order).items():
            if value or name not in {"modality", "body_part"}:
                setattr(row, name, value)
    return row


def _update(study: Study | Any, **fields: Any) -> None:
    """Change the study's row, creating it first when the study has none yet."""
    pk = getattr(study, "pk", study)
    if StudyStat.objects.filter(pk=pk).update(updated_at=timezone.now(), **fields):
        _refresh_rollups(pk)
        return
    if not isinstance(study, Study):
        study = Study.objects.filter(pk=pk).first()
        if study is None:
            return
    try:
        with transaction.atomic():
            _new_row(study).save(force_insert=True)
    except IntegrityError:
        pass  # created meanwhile by another process
    StudyStat.objects.filter(pk=pk).update(**fields)
    _refresh_rollups(pk)


def _refresh_rollups(pk: Any) -> None:
    """The day's rollups no longer follow the study's row: recomputed before they are next read."""
    for institution_id, day in StudyStat.objects.filter(pk=pk).values_list("institution_id", "day"):
        rollups.mark_stale(institution_id, day)


def _guarded(what: str, func: Any, *args: Any, **kwargs: Any) -> None:
    try:
        with transaction.atomic():
            func(*args, **kwargs)
    except Exception:
        log.exception("statistics: recording %s failed; manage.py rebuild_statistics repairs it", what)


# Receivers -------------------------------------------------------------------


def on_study_received(sender: Any, study: Study, **kwargs: Any) -> None:
    _guarded("a received study", _update, study, images_at=study.received_at)


def on_order_linked(sender: Any, order: Order, study: Study, **kwargs: Any) -> None:
    def link() -> None:
        fields = {k: v for k, v in _order_fields(order).items() if v or k not in {"modality", "body_part"}}
        _update(study, **fields)

    _guarded("an order linked", link)


def on_order_priority_changed(sender: Any, order: Order, **kwargs: Any) -> None:
    # Senders may announce an order not yet linked to a study (or a bare stand-in for one).
    study_id = getattr(order, "study_id", None)
    if study_id:
        _guarded("a priority change", _update, study_id, priority=getattr(order, "priority", "routine"))


def _pool_of_claim(task: ReadingTask, user: Any) -> Any:
    """The pool the reader claimed through: an active pool offer of the task naming a pool they read in."""
    if user is None:
        return None
    pools = TaskOffer.objects.filter(task_id=task.pk, kind=TaskOffer.Kind.POOL, is_active=True).values("pool_id")
    return (
        PoolMember.objects.filter(pool_id__in=pools, user_id=user.pk, is_active=True)
        .values_list("pool_id", flat=True)
        .first()
    )


def _task_changed(task: ReadingTask, method: str, actor: Any, time: datetime) -> None:
    if task.kind != ReadingTask.Kind.READ:
        return
    fields: dict[str, Any] = {"priority": task.priority, "escalations": task.escalation_level}
    if method == "offer":
        # The first offer's SLA is the one compliance is measured against.
        fields["due_at"] = Coalesce("due_at", Value(task.due_at, output_field=DateTimeField()))
    elif method == "claim":
        fields.update(claimed_at=time, reader=actor, pool=_pool_of_claim(task, actor))
    elif method == "escalate":
        fields["breached"] = True
    elif method == "finalize":
        fields.update(
            signed_at=time,
            reader_id=task.claimed_by_id or getattr(actor, "pk", None),
            breached=Case(When(due_at__lt=time, then=Value(True)), default=Value(task.breached_at is not None)),
        )
    _update(task.study_id, **fields)


def on_transition(
    sender: Any, obj: Any, method: str, actor: Any = None, time: datetime | None = None, **kw: Any
) -> None:
    time = time or timezone.now()
    if sender is ReadingTask:
        _guarded(f"task {method}", _task_changed, obj, method, actor, time)
    elif sender is Study and method == "complete":
        _guarded("a completed study", _update, obj, completed_at=time)


# The edge backlog ------------------------------------------------------------


def do_sample_edge_backlogs(*, now: datetime | None = None) -> int:
    """Record every live edge's last reported outbox (depth, oldest wait); one row per edge per call."""
    now = now or timezone.now()
    edges = EdgeGateway.objects.filter(revoked_at__isnull=True, last_seen_at__isnull=False)
    rows = [
        EdgeBacklogSample(
            institution_id=edge.institution_id,
            edge=edge,
            taken_at=now,
            outbox_depth=edge.outbox_depth,
            oldest_unsent_seconds=edge.oldest_unsent_seconds,
            seen_at=edge.last_seen_at,
        )
        for edge in edges
    ]
    EdgeBacklogSample.objects.bulk_create(rows)
    return len(rows)


# Rebuilding ------------------------------------------------------------------

_FIELDS = [f.name for f in StudyStat._meta.concrete_fields if f.name != "study"]


def _rows(studies: list[dict[str, Any]], zones: dict[Any, str]) -> Iterable[StudyStat]:
    ids = [s["pk"] for s in studies]
    orders: dict[Any, Order] = {}
    for order in (
        Order.objects.filter(study_id__in=ids)
        .exclude(state=Order.State.CANCELLED)
        .select_related("procedure", "station")
        .order_by("-created_at")
    ):
        orders[order.study_id] = order  # the earliest wins
    parts = dict(Series.objects.filter(study_id__in=ids).exclude(body_part="").values_list("study_id", "body_part"))
    tasks: dict[Any, ReadingTask] = {}
    for task in (
        ReadingTask.objects.filter(study_id__in=ids, kind=ReadingTask.Kind.READ)
        .exclude(state=ReadingTask.State.CANCELLED)
        .order_by("created_at")
    ):
        tasks[task.study_id] = task  # the latest live read speaks
    pool_offers: dict[Any, set[Any]] = {}
    for task_id, pool_id in TaskOffer.objects.filter(
        task_id__in=[t.pk for t in tasks.values()], kind=TaskOffer.Kind.POOL
    ).values_list("task_id", "pool_id"):
        pool_offers.setdefault(task_id, set()).add(pool_id)
    pools = {p for s in pool_offers.values() for p in s}
    members = set(PoolMember.objects.filter(pool_id__in=pools).values_list("pool_id", "user_id"))
    now = timezone.now()
    for study in studies:
        pk = study["pk"]
        row = StudyStat(
            study_id=pk,
            institution_id=study["institution_id"],
            day=local_day(study["received_at"], zones.get(study["institution_id"], "UTC")),
            modality=_first_modality(study["modalities"]),
            body_part=parts.get(pk, "")[:64],
            images_at=study["received_at"],
            completed_at=study["completed_at"],
            updated_at=now,
        )
        order = orders.get(pk)
        if order is not None:
            for name, value in _order_fields(order).items():
                if value or name not in {"modality", "body_part"}:
                    setattr(row, name, value)
        task = tasks.get(pk)
        if task is not None:
            row.priority = task.priority
            row.escalations = task.escalation_level
            # After an escalation the first SLA's end is gone; the first breach marks it.
            row.due_at = task.due_at if task.escalation_level == 0 else task.breached_at or task.due_at
            if task.claimed_by_id:
                row.reader_id = task.claimed_by_id
                row.claimed_at = task.claimed_at
                row.pool_id = next(
                    (p for p in sorted(pool_offers.get(task.pk, ()), key=str) if (p, task.claimed_by_id) in members),
                    None,
                )
            if task.state == ReadingTask.State.FINAL:
                row.signed_at = task.finished_at
            row.breached = task.breached_at is not None or bool(
                row.due_at and row.signed_at and row.signed_at > row.due_at
            )
        yield row


def rebuild(*, institution: Institution | None = None, batch: int = 2000, progress: Any = None) -> int:
    """Recompute every study's row from the archive, worklist and workflow tables, then the daily rollups; returns the count."""
    zones = dict(Institution.objects.values_list("pk", "time_zone"))
    # Plain values: a model instance with its protected state deferred loads it row by row.
    studies = Study.objects.order_by("pk").values("pk", "institution_id", "received_at", "completed_at", "modalities")
    if institution is not None:
        studies = studies.filter(institution=institution)
        StudyStat.objects.filter(institution=institution).exclude(study__in=studies.values("pk")).delete()
    else:
        StudyStat.objects.exclude(study__in=Study.objects.values("pk")).delete()
    done = 0
    last = None
    while True:
        page = studies.filter(pk__gt=last) if last is not None else studies
        chunk = list(page[:batch])
        if not chunk:
            break
        with transaction.atomic():
            StudyStat.objects.bulk_create(
                list(_rows(chunk, zones)), update_conflicts=True, unique_fields=["study"], update_fields=_FIELDS
            )
        done += len(chunk)
        last = chunk[-1]["pk"]
        if progress is not None:
            progress(done)
    rollups.rebuild(institution.pk if institution is not None else None)
    return done
