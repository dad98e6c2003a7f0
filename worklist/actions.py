"""Every change to patients' exams: registration, orders, MPPS, study matching.

Views, the API, the DICOM handlers and the signal receivers call these
``do_*`` functions; none changes an order's state itself. Each runs in one
transaction on a row re-read with ``select_for_update()``, writes the
transition and audit rows there, and announces the change after commit.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from django_fsm import TransitionNotAllowed
from pydicom import Dataset

from archive import names
from archive.actions import (
    do_complete_study,
    do_correct_patient_demographics,
    do_create_patient,
    do_link_study_to_patient,
)
from archive.ingest import birth_date_in_future
from archive.models import Instance, Patient, Study
from archive.query import patient_name_q
from pacs_cloud import audit, push
from pacs_cloud.fsm import apply_transition
from pacs_cloud.lib import dicom_datetime
from pacs_cloud.lib.dicom_match import fold_name, name_groups
from pacs_cloud.lib.uids import is_valid_uid, new_uid
from pacs_cloud.models import CLINICAL_ROLES, Institution, Role

from . import signals
from .models import (
    IdentifierCounter,
    Order,
    PerformedProcedureStep,
    PerformedSeries,
    Procedure,
    ReconciliationItem,
    Station,
)

log = logging.getLogger(__name__)

ORDER_TOPIC = "worklist.order"
RECONCILIATION_TOPIC = "worklist.reconciliation"


# Identifiers -----------------------------------------------------------------


def _next_number(institution: Institution, kind: str, period: str) -> int:
    """The next number of a per-institution counter; the row lock serialises issuers."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                IdentifierCounter.objects.get_or_create(institution=institution, kind=kind, period=period)
        except IntegrityError:
            pass  # another issuer created the row first
        counter = IdentifierCounter.objects.select_for_update().get(institution=institution, kind=kind, period=period)
        counter.value += 1
        counter.save(update_fields=["value"])
        return counter.value


def format_identifier(template: str, institution: Institution, *, seq: int, day: dt.date, kind: str = "") -> str:
    prefix = institution.patient_prefix if kind == "patient" else institution.accession_prefix
    return template.format(prefix=prefix, date=day, seq=seq)


def _issue(kind: str, template: str, institution: Institution, exists: Callable[[str], bool], limit: int) -> str:
    day = timezone.now().astimezone(ZoneInfo(institution.time_zone)).date()
    # A template with the date restarts its sequence every day.
    period = day.strftime("%Y%m%d") if "{date" in template else ""
    while True:
        value = format_identifier(
            template, institution, seq=_next_number(institution, kind, period), day=day, kind=kind
        )
        if len(value) > limit:
            raise ValidationError(f"The {kind} format {template!r} gives {value!r}, longer than {limit} characters.")
        if not exists(value):
            return value


def issue_accession_number(institution: Institution) -> str:
    """A new accession number in ``settings.WORKLIST_ACCESSION_FORMAT``, unique at the institution."""
    return _issue(
        "accession",
        settings.WORKLIST_ACCESSION_FORMAT,
        institution,
        lambda v: Order.objects.filter(institution=institution, accession_number=v).exists(),
        16,
    )


def issue_patient_id(institution: Institution) -> str:
    return _issue(
        "patient",
        settings.WORKLIST_PATIENT_ID_FORMAT,
        institution,
        lambda v: Patient.objects.filter(institution=institution, patient_id=v).exists(),
        64,
    )


# Patients ------------------------------------------------------------------


def patient_name_fields(pn: str) -> dict[str, str]:
    """The archive's stored and matching forms of a patient's name (``archive.names``)."""
    forms = names.name_forms(pn)
    return {
        "name": forms.full[:324],
        "name_search": forms.alphabetic[:324],
        "name_ideographic": forms.ideographic[:324],
        "name_phonetic": forms.phonetic[:324],
        "name_words": forms.words[:400],
    }


def find_patients(institution: Institution, query: str, *, limit: int = 25) -> list[Patient]:
    """Patients of ``institution`` whose ID is ``query`` or whose name fits it.

    The name is matched as every patient search matches it
    (:func:`archive.query.patient_name_q`): by its Latin, ideographic or
    phonetic words, the full ideographic name (``张三``) and the forms the
    pages show (``ZHANG, SAN``, ``张三 (ZHANG, SAN)``).
    """
    query = query.strip()
    if not query:
        return []
    patients = Patient.objects.filter(institution=institution)
    exact = list(patients.filter(patient_id__iexact=query))
    named = patient_name_q(query)
    if not named:  # nothing but punctuation: no name to match
        return exact[:limit]
    rest = list(patients.filter(named).exclude(pk__in=[p.pk for p in exact]).order_by("name")[:limit])
    return (exact + rest)[:limit]


def likely_duplicates(institution: Institution, name: str, birth_date: dt.date | None) -> list[Patient]:
    """Registered patients with the same name (any group) and birth date."""
    if not birth_date:
        return []
    wanted = {fold_name(g) for g in name_groups(name) if g}
    same_day = Patient.objects.filter(institution=institution, birth_date=birth_date)
    return [p for p in same_day if wanted & {fold_name(g) for g in name_groups(p.name) if g}]


def do_register_patient(
    institution: Institution,
    *,
    name: str,
    patient_id: str = "",
    birth_date: dt.date | None = None,
    sex: str = "",
    actor: Any = None,
    request: HttpRequest | None = None,
    allow_possible_duplicate: bool = False,
) -> Patient:
    """Register a patient at ``institution`` (the archive's one patient record).

    A blank ``patient_id`` gets one issued in ``settings.WORKLIST_PATIENT_ID_FORMAT``.
    Refuses an ID already registered, and — unless ``allow_possible_duplicate``
    — a patient whose name and birth date match a registered one.
    """
    name = name.strip()
    if not name.strip("=^ "):
        raise ValidationError({"name": "A patient needs a name."})
    if sex not in ("", "M", "F", "O"):
        raise ValidationError({"sex": "Sex is M, F, O or blank."})
    if birth_date is not None and birth_date_in_future(institution, birth_date):
        raise ValidationError({"birth_date": f"The birth date {birth_date.isoformat()} is in the future."})
    patient_id = patient_id.strip()
    if patient_id and Patient.objects.filter(institution=institution, patient_id=patient_id).exists():
        raise ValidationError({"patient_id": f"Patient ID {patient_id} is already registered here."})
    if not allow_possible_duplicate and likely_duplicates(institution, name, birth_date):
        message = "A patient with this name and birth date is already registered; choose them instead."
        raise ValidationError({"name": ValidationError(message, code="possible_duplicate")})
    try:
        with transaction.atomic():
            patient = _create_patient(
                institution,
                name=name,
                patient_id=patient_id,
                birth_date=birth_date,
                sex=sex,
                actor=actor,
                request=request,
            )
    except IntegrityError:
        # Registered a moment ago by someone else.
        raise ValidationError({"patient_id": f"Patient ID {patient_id} is already registered here."}) from None
    return patient


def _create_patient(
    institution: Institution,
    *,
    name: str,
    patient_id: str,
    birth_date: dt.date | None,
    sex: str,
    actor: Any,
    request: HttpRequest | None,
) -> Patient:
    return do_create_patient(
        institution,
        patient_id=patient_id or issue_patient_id(institution),
        name=name,
        birth_date=birth_date,
        sex=sex,
        actor=actor,
        request=request,
        event="worklist.patient.register",
    )


def do_find_or_register_patient(
    institution: Institution,
    *,
    pk: Any = None,
    patient_id: str = "",
    name: str = "",
    birth_date: dt.date | None = None,
    sex: str = "",
    actor: Any = None,
    request: HttpRequest | None = None,
    allow_possible_duplicate: bool = False,
) -> Patient:
    """The institution's patient with ``pk`` or ``patient_id`` if registered, else a new one.

    Finding first keeps one record per patient: an ID already registered
    under a different name is refused rather than silently reused.
    """
    patients = Patient.objects.filter(institution=institution)
    if pk:
        found = patients.filter(pk=pk).first()
        if found is None:
            raise ValidationError({"patient": "No such patient at this institution."})
        return found
    patient_id = patient_id.strip()
    found = patients.filter(patient_id=patient_id).first() if patient_id else None
    if found is not None:
        if name and not {fold_name(g) for g in name_groups(name) if g} & {
            fold_name(g) for g in name_groups(found.name) if g
        }:
            raise ValidationError({"patient_id": f"Patient ID {patient_id} is registered as {found.name}."})
        return found
    return do_register_patient(
        institution,
        name=name,
        patient_id=patient_id,
        birth_date=birth_date,
        sex=sex,
        actor=actor,
        request=request,
        allow_possible_duplicate=allow_possible_duplicate,
    )


# Orders --------------------------------------------------------------------


def notify_order(order: Order, event: str) -> None:
    """Tell the open worklist pages of the institution's clinical staff that an order changed."""
    data = {"id": str(order.pk), "event": event, "state": order.state, "date": order.scheduled_date.isoformat()}
    for role in sorted(CLINICAL_ROLES):
        push.notify(push.institution_group(order.institution_id, role), ORDER_TOPIC, data)


def _local_schedule(institution: Institution, when: dt.datetime) -> tuple[dt.date, dt.time]:
    if timezone.is_naive(when):
        raise ValidationError({"scheduled_at": "The scheduled time needs a time zone."})
    local = when.astimezone(ZoneInfo(institution.time_zone))
    return local.date(), local.time().replace(microsecond=0)


def _check_order_parts(institution: Institution, patient: Patient, procedure: Procedure, station: Station) -> None:
    errors = {}
    if patient.institution_id != institution.pk:
        errors["patient"] = "The patient is registered at another institution."
    if procedure.institution_id != institution.pk or not procedure.is_active:
        errors["procedure"] = "Choose a procedure of this institution's catalogue."
    if station.institution_id != institution.pk or not station.is_active:
        errors["station"] = "Choose a station of this institution."
    elif procedure.modality != station.modality:
        errors["station"] = (
            f"{procedure.name} is a {procedure.modality} procedure; {station.name} is a {station.modality} station."
        )
    if errors:
        raise ValidationError(errors)


def do_create_order(
    institution: Institution,
    *,
    patient: Patient,
    procedure: Procedure,
    station: Station,
    scheduled_at: dt.datetime,
    priority: str = Order.Priority.ROUTINE,
    referring_physician: str = "",
    clinical_info: str = "",
    actor: Any = None,
    request: HttpRequest | None = None,
) -> Order:
    """Register an exam: issue its accession number and Study Instance UID, schedule it."""
    _check_order_parts(institution, patient, procedure, station)
    if priority not in Order.Priority.values:
        raise ValidationError({"priority": "Priority is routine, urgent or stat."})
    day, moment = _local_schedule(institution, scheduled_at)
    with transaction.atomic():
        accession = issue_accession_number(institution)
        order = Order.objects.create(
            institution=institution,
            patient=patient,
            procedure=procedure,
            station=station,
            accession_number=accession,
            requested_procedure_id=accession,
            sps_id=accession,
            study_instance_uid=new_uid(),
            priority=priority,
            referring_physician=referring_physician.strip(),
            clinical_info=clinical_info.strip(),
            scheduled_at=scheduled_at,
            scheduled_date=day,
            scheduled_time=moment,
            modality=procedure.modality,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        audit.record(
            "worklist.order.create",
            request=request,
            actor=actor,
            institution=institution,
            object_type="worklist.order",
            object_id=order.pk,
            patient_id=patient.patient_id,
            detail={"accession_number": accession, "procedure": procedure.code, "priority": priority},
        )
        notify_order(order, "created")
    return order


# Fields a technologist may change while the exam has not started, and those
# that stay editable until it is finished (the reading still depends on them).
SCHEDULE_FIELDS = ("procedure", "station", "scheduled_at")
LATE_FIELDS = ("priority", "referring_physician", "clinical_info")


def do_edit_order(
    order: Order, *, changes: dict[str, Any], actor: Any = None, request: HttpRequest | None = None
) -> Order:
    """Change an order's details; rescheduling only before the exam starts.

    Sends ``order_priority_changed`` after commit when the priority changed.
    """
    unknown = set(changes) - set(SCHEDULE_FIELDS) - set(LATE_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        locked = Order.objects.select_for_update().select_related("institution").get(pk=order.pk)
        if locked.state == Order.State.CANCELLED:
            raise ValidationError("A cancelled order cannot be edited.")
        changed = {k: v for k, v in changes.items() if getattr(locked, k) != v}
        if set(changed) & set(SCHEDULE_FIELDS) and locked.state not in Order.OPEN_STATES:
            raise ValidationError("The exam has started: it can no longer be rescheduled.")
        if not changed:
            return locked
        if "priority" in changed and changed["priority"] not in Order.Priority.values:
            raise ValidationError({"priority": "Priority is routine, urgent or stat."})
        old_priority = locked.priority
        detail = {k: {"old": _plain(getattr(locked, k)), "new": _plain(v)} for k, v in changed.items()}
        for key, value in changed.items():
            setattr(locked, key, value.strip() if isinstance(value, str) else value)
        _check_order_parts(locked.institution, locked.patient, locked.procedure, locked.station)
        fields = list(changed)
        if "scheduled_at" in changed:
            locked.scheduled_date, locked.scheduled_time = _local_schedule(locked.institution, locked.scheduled_at)
            fields += ["scheduled_date", "scheduled_time"]
        if "procedure" in changed:
            locked.modality = locked.procedure.modality
            fields.append("modality")
        locked.updated_at = timezone.now()
        locked.save(update_fields=[*fields, "updated_at"])
        audit.record(
            "worklist.order.edit",
            request=request,
            actor=actor,
            institution=locked.institution_id,
            object_type="worklist.order",
            object_id=locked.pk,
            patient_id=locked.patient.patient_id,
            detail=detail,
        )
        notify_order(locked, "edited")
        if "priority" in changed:
            transaction.on_commit(
                lambda: signals.order_priority_changed.send(Order, order=locked, old_priority=old_priority)
            )
    return locked


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "pk"):
        return str(value.pk)
    return value


def _transition(
    order: Order,
    method: str,
    *,
    actor: Any = None,
    actor_label: str = "",
    reason: str = "",
    update_fields: Iterable[str] = (),
    **kwargs: Any,
) -> Order:
    """Apply one order transition on a locked row; raises TransitionNotAllowed."""
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        locked.updated_at = timezone.now()
        apply_transition(
            locked,
            method,
            actor=actor,
            actor_label=actor_label,
            institution=locked.institution_id,
            reason=reason,
            update_fields=[*update_fields, "updated_at"],
            audit_detail={"accession_number": locked.accession_number},
            **kwargs,
        )
        notify_order(locked, method)
    return locked


def do_arrive_order(order: Order, *, actor: Any = None) -> Order:
    """The patient is at the department (the step shows as ARRIVED on the worklist)."""
    return _transition(order, "arrive", actor=actor)


def _withdraw(order: Order, method: str, *, reason: str, actor: Any, actor_label: str) -> Order:
    """Cancel or discontinue with a reason, and announce it (``order_cancelled``) after commit."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the exam is stopped."})
    locked = _transition(
        order,
        method,
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        update_fields=["cancel_reason"],
        cancel_reason=reason,
    )
    transaction.on_commit(lambda: signals.order_cancelled.send(Order, order=locked))
    return locked


def do_cancel_order(order: Order, *, reason: str, actor: Any = None, actor_label: str = "") -> Order:
    """Withdraw an exam that has not started; it leaves the worklist. Needs a reason."""
    return _withdraw(order, "cancel", reason=reason, actor=actor, actor_label=actor_label)


def do_discontinue_order(order: Order, *, reason: str, actor: Any = None, actor_label: str = "") -> Order:
    """Stop an exam that has started and will not be finished (announced like a cancellation)."""
    return _withdraw(order, "discontinue", reason=reason, actor=actor, actor_label=actor_label)


def do_start_order(order: Order, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """Mark the exam in progress; False (and no change) if it is already past that."""
    try:
        _transition(order, "start", actor=actor, actor_label=actor_label, reason=reason)
    except TransitionNotAllowed:
        return False
    return True


def do_complete_order(order: Order, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """Complete an exam (MPPS COMPLETED, its study complete, or its report signed).

    Safe to call again: returns False and changes nothing when the order is
    already completed, discontinued or cancelled.
    """
    try:
        _transition(order, "complete", actor=actor, actor_label=actor_label, reason=reason)
    except TransitionNotAllowed:
        return False
    return True


# Matching arriving studies to orders ------------------------------------------


def match_order(study: Study) -> Order | None:
    """The order a study belongs to: by the pre-assigned Study Instance UID,
    else by accession number and patient ID together."""
    orders = Order.objects.filter(institution_id=study.institution_id).exclude(state=Order.State.CANCELLED)
    by_uid = orders.filter(study_instance_uid=study.study_instance_uid).first()
    if by_uid is not None:
        return by_uid
    if not study.accession_number or not study.patient.patient_id:
        return None
    return (
        orders.filter(
            accession_number=study.accession_number,
            patient__patient_id=study.patient.patient_id,
            study__isnull=True,
        )
        .order_by("scheduled_at")
        .first()
    )


def notify_reconciliation(institution_id: Any) -> None:
    push.notify(push.institution_group(institution_id, Role.TECHNOLOGIST), RECONCILIATION_TOPIC, {})


def do_link_study(
    study: Study,
    order: Order,
    *,
    actor: Any = None,
    actor_label: str = "",
    reason: str = "",
    request: HttpRequest | None = None,
) -> Order:
    """Link an archived study to its order; the exam is then in progress at least.

    Resolves the study's reconciliation item, if any, and sends
    ``order_linked`` after commit.
    """
    with transaction.atomic():
        locked = Order.objects.select_for_update().select_related("patient").get(pk=order.pk)
        if locked.institution_id != study.institution_id:
            raise ValidationError("The study and the order belong to different institutions.")
        if locked.state == Order.State.CANCELLED:
            raise ValidationError("The order is cancelled.")
        if locked.study_id not in (None, study.pk):
            raise ValidationError(f"Order {locked.accession_number} is already linked to another study.")
        already = locked.study_id == study.pk
        if study.patient_id != locked.patient_id:
            # The registered patient is authoritative: the study joins them. The
            # images keep what they say; the archive serves the registered
            # demographics and still accepts late images with the old ones.
            do_link_study_to_patient(
                study,
                locked.patient,
                acting_user=actor,
                actor_label=actor_label,
                reason=f"linked to exam {locked.accession_number}",
            )
        locked.study = study
        locked.updated_at = timezone.now()
        locked.save(update_fields=["study", "updated_at"])
        if locked.state in Order.OPEN_STATES:
            apply_transition(
                locked,
                "start",
                actor=actor,
                actor_label=actor_label,
                institution=locked.institution_id,
                reason=reason or "images received",
            )
        resolved = ReconciliationItem.objects.filter(study=study, resolved_at__isnull=True).update(
            resolution=ReconciliationItem.Resolution.LINKED,
            resolved_at=timezone.now(),
            resolved_by=actor if getattr(actor, "pk", None) else None,
            note=reason,
        )
        if not already:
            audit.record(
                "worklist.order.link",
                request=request,
                actor=actor,
                actor_label=actor_label,
                institution=locked.institution_id,
                object_type="worklist.order",
                object_id=locked.pk,
                patient_id=locked.patient.patient_id,
                detail={"study": str(study.pk), "study_instance_uid": study.study_instance_uid, "reason": reason},
            )
            transaction.on_commit(lambda: signals.order_linked.send(Order, order=locked, study=study))
        notify_order(locked, "linked")
        if resolved:
            notify_reconciliation(locked.institution_id)
    return locked


def do_queue_for_reconciliation(study: Study) -> ReconciliationItem:
    """Put a study that matched no order on its institution's reconciliation queue."""
    with transaction.atomic():
        item, created = ReconciliationItem.objects.get_or_create(
            study=study, defaults={"institution_id": study.institution_id}
        )
        if created:
            audit.record(
                "worklist.reconciliation.queue",
                actor_label="order matching",
                institution=study.institution_id,
                object_type="archive.study",
                object_id=study.pk,
                patient_id=study.patient.patient_id,
            )
            notify_reconciliation(study.institution_id)
    return item


def do_dismiss_reconciliation(
    item: ReconciliationItem, *, note: str, actor: Any, request: HttpRequest | None = None
) -> None:
    """Close a queue item for a study that needs no order (e.g. an imported prior)."""
    note = note.strip()
    if not note:
        raise ValidationError({"note": "Say why this study needs no order."})
    with transaction.atomic():
        updated = ReconciliationItem.objects.filter(pk=item.pk, resolved_at__isnull=True).update(
            resolution=ReconciliationItem.Resolution.DISMISSED,
            resolved_at=timezone.now(),
            resolved_by=actor,
            note=note,
        )
        if not updated:
            raise ValidationError("This study has already been reconciled.")
        audit.record(
            "worklist.reconciliation.dismiss",
            request=request,
            actor=actor,
            institution=item.institution_id,
            object_type="archive.study",
            object_id=item.study_id,
            detail={"note": note},
        )
        notify_reconciliation(item.institution_id)


def do_correct_study_patient(
    item: ReconciliationItem,
    *,
    name: str,
    patient_id: str,
    birth_date: dt.date | None,
    sex: str,
    actor: Any,
    request: HttpRequest | None = None,
) -> Order | None:
    """Correct the patient a queued study was received under, then match it again.

    An ID already registered here makes the study join that patient; otherwise
    the archive corrects its patient record (``do_correct_patient_demographics``,
    audited there). Returns the order the study then matched, if any.
    """
    study = Study.objects.select_related("patient").get(pk=item.study_id)
    patient_id = patient_id.strip()
    registered = (
        Patient.objects.filter(institution_id=study.institution_id, patient_id=patient_id)
        .exclude(pk=study.patient_id)
        .order_by("issuer")
        .first()
        if patient_id
        else None
    )
    with transaction.atomic():
        if registered is not None:
            do_link_study_to_patient(study, registered, acting_user=actor, reason="patient corrected at reconciliation")
        else:
            try:
                do_correct_patient_demographics(
                    study.patient,
                    acting_user=actor,
                    reason="corrected at reconciliation",
                    name=name,
                    patient_id=patient_id or None,
                    birth_date=birth_date,
                    sex=sex,
                )
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
        audit.record(
            "worklist.reconciliation.correct",
            request=request,
            actor=actor,
            institution=item.institution_id,
            object_type="archive.study",
            object_id=study.pk,
            patient_id=patient_id,
            detail={"joined_registered_patient": registered is not None},
        )
    study = Study.objects.select_related("patient").get(pk=study.pk)
    order = match_order(study)
    if order is not None and order.study_id is None:
        return do_link_study(study, order, actor=actor, reason="matched after correcting the patient", request=request)
    notify_reconciliation(item.institution_id)
    return None


def link_or_queue(study: Study) -> Order | None:
    """Match a newly received study to its order, or queue it for reconciliation."""
    study = Study.objects.select_related("patient").get(pk=study.pk)
    order = match_order(study)
    if order is None:
        do_queue_for_reconciliation(study)
        return None
    how = (
        "Study Instance UID"
        if order.study_instance_uid == study.study_instance_uid
        else "accession number and patient ID"
    )
    try:
        return do_link_study(study, order, actor_label="order matching", reason=f"matched by {how}")
    except ValidationError:
        # e.g. the order already has another study: a person must decide.
        do_queue_for_reconciliation(study)
        return None


def complete_orders_of_study(study: Study) -> None:
    """A study became complete: complete its orders, unless a modality still reports the exam in progress."""
    for order in Order.objects.filter(study=study, state__in=Order.WORKLIST_STATES):
        if order.performed_steps.filter(state=PerformedProcedureStep.State.IN_PROGRESS).exists():
            continue
        do_complete_order(order, actor_label="archive", reason="study complete")


# Modality Performed Procedure Step (PS3.4 F.7) ----------------------------------


class MppsError(Exception):
    """An MPPS request refused with a DIMSE status (PS3.7 C, PS3.4 F.7.2.2.4); nothing changed."""

    def __init__(self, status: int, comment: str, *, error_id: int | None = None, tags: Iterable[Any] = ()) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]
        self.error_id = error_id
        self.tags = list(tags)


# PS3.7 Annex C status codes used by the MPPS SCP
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
# Error ID of "Performed Procedure Step Object may no longer be updated" (PS3.4 Table F.7.2-2)
MAY_NO_LONGER_BE_UPDATED = 0xA710

PPS_STATUS = {
    "IN PROGRESS": PerformedProcedureStep.State.IN_PROGRESS,
    "COMPLETED": PerformedProcedureStep.State.COMPLETED,
    "DISCONTINUED": PerformedProcedureStep.State.DISCONTINUED,
}
# Type 1 attributes of an N-CREATE (PS3.4 Table F.7.2-1).
CREATE_REQUIRED = (
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "PerformedProcedureStepID",
    "Modality",
)
# Attributes an N-SET may not change (PS3.4 Table F.7.2-1, "Not allowed").
SET_NOT_ALLOWED = (
    "ScheduledStepAttributesSequence",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "PerformedStationAETitle",
    "PerformedStationName",
    "PerformedLocation",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID",
    "Modality",
    "StudyID",
)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip()


def _moment(ds: Dataset, date_kw: str, time_kw: str, institution: Institution) -> dt.datetime | None:
    try:
        day = dicom_datetime.parse_da(_text(ds, date_kw))
        moment = dicom_datetime.parse_tm(_text(ds, time_kw))
    except dicom_datetime.InvalidDicomDateTime as exc:
        raise MppsError(INVALID_ATTRIBUTE_VALUE, str(exc)) from None
    return dicom_datetime.to_aware(day, moment, institution.time_zone) if day else None


def _scheduled_order(item: Dataset, institution: Institution) -> Order | None:
    """The order a Scheduled Step Attributes item refers to, if any (unscheduled steps have none)."""
    orders = Order.objects.filter(institution=institution)
    study_uid, sps_id = _text(item, "StudyInstanceUID"), _text(item, "ScheduledProcedureStepID")
    accession, rp_id = _text(item, "AccessionNumber"), _text(item, "RequestedProcedureID")
    if study_uid:
        found = orders.filter(study_instance_uid=study_uid).first()
        if found is not None:
            return found
    if sps_id and accession:
        return orders.filter(accession_number=accession, sps_id=sps_id).first()
    if accession and rp_id:
        return orders.filter(accession_number=accession, requested_procedure_id=rp_id).first()
    return None


def _performed_series(ds: Dataset) -> list[tuple[str, list[str]]]:
    series = []
    for item in ds.get("PerformedSeriesSequence") or []:
        uids = [
            _text(ref, "ReferencedSOPInstanceUID")
            for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")
            for ref in item.get(key) or []
        ]
        series.append((_text(item, "SeriesInstanceUID"), [u for u in uids if u]))
    return series


def _json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=10**9, bulk_data_element_handler=lambda element: "")


def check_mpps_create(sop_instance_uid: str, attributes: Dataset) -> Any:
    """The checks of an N-CREATE that need no database (the edge makes them too); returns its
    Scheduled Step Attributes items. Raises :class:`MppsError`."""
    if not is_valid_uid(sop_instance_uid):
        raise MppsError(INVALID_OBJECT_INSTANCE, "Affected SOP Instance UID is not a valid UID")
    for keyword in CREATE_REQUIRED:
        if keyword not in attributes:
            raise MppsError(MISSING_ATTRIBUTE, f"{keyword} is missing", tags=[attributes_tag(keyword)])
        if not _text(attributes, keyword):
            raise MppsError(MISSING_ATTRIBUTE_VALUE, f"{keyword} is empty", tags=[attributes_tag(keyword)])
    status = _text(attributes, "PerformedProcedureStepStatus")
    if status != "IN PROGRESS":
        raise MppsError(INVALID_ATTRIBUTE_VALUE, f"a new step must be IN PROGRESS, not {status}")
    items = attributes.get("ScheduledStepAttributesSequence")
    if not items:
        raise MppsError(MISSING_ATTRIBUTE, "ScheduledStepAttributesSequence is missing or empty")
    for item in items:
        if not _text(item, "StudyInstanceUID"):
            raise MppsError(MISSING_ATTRIBUTE_VALUE, "Scheduled Step Attributes item lacks Study Instance UID")
    return items


def merge_mpps_set(state: str, stored: Dataset, modifications: Dataset) -> tuple[Dataset, PerformedProcedureStep.State]:
    """The checks of an N-SET on a step in ``state`` with ``stored`` attributes that need no
    database (the edge makes them too); returns the merged attributes and the new state.
    Raises :class:`MppsError`."""
    if state != PerformedProcedureStep.State.IN_PROGRESS:
        raise MppsError(
            PROCESSING_FAILURE,
            "Performed Procedure Step Object may no longer be updated",
            error_id=MAY_NO_LONGER_BE_UPDATED,
        )
    for keyword in SET_NOT_ALLOWED:
        if keyword in modifications:
            raise MppsError(INVALID_ATTRIBUTE_VALUE, f"{keyword} may not be changed", tags=[attributes_tag(keyword)])
    merged = stored
    for element in modifications:
        if element.tag.group != 0:
            merged[element.tag] = element
    status = _text(merged, "PerformedProcedureStepStatus")
    new_state = PPS_STATUS.get(status)
    if new_state is None:
        raise MppsError(INVALID_ATTRIBUTE_VALUE, f"Performed Procedure Step Status {status!r} is not valid")
    if new_state == PerformedProcedureStep.State.COMPLETED:
        if not _text(merged, "PerformedProcedureStepEndDate") or not _text(merged, "PerformedProcedureStepEndTime"):
            raise MppsError(MISSING_ATTRIBUTE_VALUE, "a completed step needs its end date and time")
        series = _performed_series(merged)
        if not series or not all(uid for uid, _ in series):
            raise MppsError(MISSING_ATTRIBUTE_VALUE, "a completed step needs its Performed Series Sequence")
    return merged, new_state


def do_create_mpps(
    sop_instance_uid: str, attributes: Dataset, *, institution: Institution, ae_title: str
) -> PerformedProcedureStep:
    """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1).

    The step must be IN PROGRESS and carry the Type 1 attributes. A step for
    a scheduled order moves that order to in_progress. A step for an order
    already completed (its study completed before the modality's message
    came, e.g. relayed late by an edge) is kept as the exam's history and
    leaves the order completed; one for a cancelled or discontinued order is
    refused. Raises :class:`MppsError` and changes nothing when the request
    is refused.
    """
    items = check_mpps_create(sop_instance_uid, attributes)
    started = _moment(attributes, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", institution)
    order = next((o for o in (_scheduled_order(item, institution) for item in items) if o is not None), None)
    label = f"AE {ae_title}"
    with transaction.atomic():
        if PerformedProcedureStep.objects.filter(sop_instance_uid=sop_instance_uid).exists():
            raise MppsError(DUPLICATE_SOP_INSTANCE, "a step with this SOP Instance UID exists")
        late = False
        if order is not None:
            order = Order.objects.select_for_update().get(pk=order.pk)
            late = order.state == Order.State.COMPLETED
            if order.state not in Order.WORKLIST_STATES and not late:
                raise MppsError(
                    PROCESSING_FAILURE, f"order {order.accession_number} is {order.get_state_display().lower()}"
                )
        step = PerformedProcedureStep.objects.create(
            institution=institution,
            sop_instance_uid=sop_instance_uid,
            order=order,
            station_ae_title=_text(attributes, "PerformedStationAETitle")[:16],
            pps_id=_text(attributes, "PerformedProcedureStepID")[:16],
            modality=_text(attributes, "Modality")[:16],
            study_instance_uid=_text(items[0], "StudyInstanceUID")[:64],
            attributes=_json(attributes),
            started_at=started,
        )
        audit.record(
            "worklist.mpps.create",
            actor_label=label,
            institution=institution,
            object_type="worklist.performedprocedurestep",
            object_id=step.pk,
            patient_id=_text(attributes, "PatientID"),
            detail={
                "sop_instance_uid": sop_instance_uid,
                "order": str(order.pk) if order else None,
                # Recorded as history: the order was completed before this step arrived.
                "after_order_completed": late,
            },
        )
        if order is not None and order.state in Order.OPEN_STATES:
            _transition(order, "start", actor_label=label, reason="MPPS IN PROGRESS")
    return step


def attributes_tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    return int(tag_for_keyword(keyword) or 0)


def do_update_mpps(
    sop_instance_uid: str, modifications: Dataset, *, institution: Institution, ae_title: str
) -> PerformedProcedureStep:
    """N-SET of a Modality Performed Procedure Step (PS3.4 F.7.2.2).

    Only a step IN PROGRESS may change (else 0110/A710); COMPLETED needs the
    final-state attributes (end date and time, performed series). COMPLETED
    completes the order once no other step of it is in progress, and lets the
    study complete as soon as every referenced image is archived;
    DISCONTINUED discontinues the order unless another step of it went on.
    Raises :class:`MppsError` and changes nothing when the request is refused.
    """
    label = f"AE {ae_title}"
    with transaction.atomic():
        step = (
            PerformedProcedureStep.objects.select_for_update()
            .filter(sop_instance_uid=sop_instance_uid, institution=institution)
            .first()
        )
        if step is None:
            raise MppsError(NO_SUCH_OBJECT_INSTANCE, "no such Performed Procedure Step")
        merged, new_state = merge_mpps_set(step.state, Dataset.from_json(step.attributes), modifications)
        ended = _moment(merged, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", institution)
        series = _performed_series(merged)
        step.attributes = _json(merged)
        step.ended_at = ended
        step.updated_at = timezone.now()
        fields = ["attributes", "ended_at", "updated_at"]
        if new_state == PerformedProcedureStep.State.IN_PROGRESS:
            step.save(update_fields=fields)
            audit.record(
                "worklist.mpps.update",
                actor_label=label,
                institution=institution,
                object_type="worklist.performedprocedurestep",
                object_id=step.pk,
                detail={"attributes": sorted(e.keyword or str(e.tag) for e in modifications)},
            )
            return step
        method = "complete" if new_state == PerformedProcedureStep.State.COMPLETED else "discontinue"
        apply_transition(
            step,
            method,
            actor_label=label,
            institution=institution,
            reason=f"MPPS {_text(merged, 'PerformedProcedureStepStatus')}",
            update_fields=fields,
        )
        step.series.all().delete()
        PerformedSeries.objects.bulk_create(
            PerformedSeries(step=step, series_instance_uid=uid, sop_instance_uids=uids) for uid, uids in series if uid
        )
        if step.order_id is not None:
            _finish_order(step, label)
    if step.state == PerformedProcedureStep.State.COMPLETED:
        check_mpps_completion(step)
    return step


def _finish_order(step: PerformedProcedureStep, label: str) -> None:
    order = Order.objects.select_for_update().get(pk=step.order_id)
    if order.state != Order.State.IN_PROGRESS:
        return
    others = order.performed_steps.exclude(pk=step.pk)
    if others.filter(state=PerformedProcedureStep.State.IN_PROGRESS).exists():
        return
    if step.state == PerformedProcedureStep.State.COMPLETED:
        _transition(order, "complete", actor_label=label, reason="MPPS COMPLETED")
        return
    if others.filter(state=PerformedProcedureStep.State.COMPLETED).exists():
        _transition(order, "complete", actor_label=label, reason="MPPS COMPLETED (another step discontinued)")
        return
    reason = "MPPS DISCONTINUED"
    codes = Dataset.from_json(step.attributes).get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []
    if codes and _text(codes[0], "CodeMeaning"):
        reason += f": {_text(codes[0], 'CodeMeaning')}"
    _withdraw(order, "discontinue", reason=reason, actor=None, actor_label=label)


def check_mpps_completion(step: PerformedProcedureStep) -> bool:
    """Complete the step's study once every image it references is archived.

    The study is found by the step's Study Instance UID, else by the series it
    performed. Nothing happens while another step of the study is in progress.
    """
    series = list(step.series.all())
    if not series:
        return False
    studies = Study.objects.filter(institution_id=step.institution_id)
    study = studies.filter(study_instance_uid=step.study_instance_uid).first() if step.study_instance_uid else None
    if study is None:
        study = studies.filter(series__series_instance_uid=series[0].series_instance_uid).first()
    if study is None:
        return False
    return check_study_completion(study)


def check_study_completion(study: Study) -> bool:
    """Complete a receiving study whose completed MPPS steps reference only archived images."""
    if study.state != Study.State.RECEIVING:
        return False
    series_uids = list(study.series.values_list("series_instance_uid", flat=True))
    performed = PerformedSeries.objects.filter(
        step__institution_id=study.institution_id, series_instance_uid__in=series_uids
    ).select_related("step")
    steps = {p.step for p in performed}
    steps |= set(
        PerformedProcedureStep.objects.filter(
            institution_id=study.institution_id, study_instance_uid=study.study_instance_uid
        )
    )
    if not steps or any(s.state == PerformedProcedureStep.State.IN_PROGRESS for s in steps):
        return False
    completed = [s for s in steps if s.state == PerformedProcedureStep.State.COMPLETED]
    if not completed:
        return False
    expected_series = {p.series_instance_uid for p in PerformedSeries.objects.filter(step__in=completed)}
    expected_sops = {uid for p in PerformedSeries.objects.filter(step__in=completed) for uid in p.sop_instance_uids}
    if not expected_series <= set(series_uids):
        return False
    if len(expected_sops) > study.num_instances:
        return False  # cheap early answer while images are still arriving
    stored = Instance.objects.filter(series__study=study, sop_instance_uid__in=expected_sops).count()
    if stored < len(expected_sops):
        return False
    ae = completed[0].station_ae_title
    return do_complete_study(study, actor_label=f"AE {ae}", reason="MPPS completed and every referenced image archived")


# The catalogue --------------------------------------------------------------------


def do_save_catalogue_item(
    item: Procedure | Station, *, institution: Institution, acting_user: Any, request: HttpRequest | None = None
) -> Procedure | Station:
    """Save a procedure or station of ``institution``'s catalogue (validated by its form), audited."""
    what = item._meta.model_name
    with transaction.atomic():
        item.institution = institution
        item.save()
        audit.record(
            f"worklist.{what}.save",
            request=request,
            actor=acting_user,
            institution=institution,
            object_type=f"worklist.{what}",
            object_id=item.pk,
            detail={f.name: str(f.value_from_object(item)) for f in item._meta.concrete_fields if f.name != "id"},
        )
    return item


# Importing a catalogue from CSV ----------------------------------------------------

CATALOGUE_COLUMNS = ("code", "name", "modality", "body_part", "duration_minutes", "coding_scheme")
CATALOGUE_REQUIRED = ("code", "name", "modality")
CATALOGUE_MAX_ROWS = 5000
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")  # DICOM CS: upper case, digits, space, underscore (PS3.5 6.2)


@dataclass
class CatalogueRowError:
    line: int  # the file's line, the header being line 1
    column: str
    message: str


@dataclass
class CatalogueImport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    errors: list[CatalogueRowError] = field(default_factory=list)
    encoding: str = ""


def decode_catalogue(data: bytes) -> tuple[str, str]:
    """The text of an uploaded CSV and the encoding it was in: UTF-8 (with or without BOM), else GB18030."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding), "GB18030" if encoding == "gb18030" else "UTF-8"
        except UnicodeDecodeError:
            continue
    raise ValidationError("The file is neither UTF-8 nor GB18030 text.")


def _catalogue_rows(text: str, result: CatalogueImport) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
    missing = [c for c in CATALOGUE_REQUIRED if c not in header]
    unknown = [c for c in header if c not in CATALOGUE_COLUMNS]
    if missing or unknown:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(unknown)}"] if unknown else []
        result.errors.append(
            CatalogueRowError(1, "", f"Header: {'; '.join(parts)} (columns: {', '.join(CATALOGUE_COLUMNS)}).")
        )
        return []
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for raw in reader:
        line = reader.line_num
        if len(rows) >= CATALOGUE_MAX_ROWS:
            result.errors.append(CatalogueRowError(line, "", f"At most {CATALOGUE_MAX_ROWS} procedures per file."))
            break
        if None in raw:
            result.errors.append(CatalogueRowError(line, "", "More values than columns."))
            continue
        values = {k: (v or "").strip() for k, v in raw.items()}
        if not any(values.values()):
            continue  # a blank line
        row: dict[str, Any] = {}

        def bad(column: str, message: str, line: int = line) -> None:
            result.errors.append(CatalogueRowError(line, column, message))

        code = values.get("code", "")
        if not code or len(code) > 16 or "\\" in code:
            bad("code", "A code of 1–16 characters, without a backslash, is required.")
        elif code in seen:
            bad("code", f"Code {code} is on line {seen[code]} already.")
        else:
            seen[code] = line
            row["code"] = code
        name = values.get("name", "")
        if not name or len(name) > 64 or "\\" in name:
            bad("name", "A name of 1–64 characters, without a backslash, is required.")
        row["name"] = name
        modality = values.get("modality", "").upper()
        if not _CS.match(modality):
            bad("modality", "A modality such as CT, MR, DX or US is required.")
        row["modality"] = modality
        body_part = values.get("body_part", "").upper()
        if body_part and not _CS.match(body_part):
            bad("body_part", "Body part: up to 16 capital letters, digits or underscores, e.g. CHEST.")
        row["body_part"] = body_part
        duration = values.get("duration_minutes", "")
        if duration:
            if not duration.isdigit() or not 1 <= int(duration) <= 1440:
                bad("duration_minutes", "Minutes: a whole number from 1 to 1440.")
            else:
                row["duration_minutes"] = int(duration)
        scheme = values.get("coding_scheme", "")
        if scheme:
            if len(scheme) > 16 or "\\" in scheme:
                bad("coding_scheme", "Coding scheme: up to 16 characters.")
            row["coding_scheme"] = scheme
        rows.append((line, row))
    return rows


def do_import_procedures(
    institution: Institution, data: bytes, *, acting_user: Any, request: HttpRequest | None = None
) -> CatalogueImport:
    """Add or update ``institution``'s procedures from a CSV file (by code), all or nothing.

    Columns: ``code,name,modality`` and optionally ``body_part``,
    ``duration_minutes``, ``coding_scheme``. The file may be UTF-8 or GB18030
    (as spreadsheets save Chinese text). When any row is wrong nothing is
    saved and ``errors`` names each wrong row, column and why.
    """
    result = CatalogueImport()
    try:
        text, result.encoding = decode_catalogue(data)
    except ValidationError as exc:
        result.errors.append(CatalogueRowError(1, "", exc.messages[0]))
        return result
    rows = _catalogue_rows(text, result)
    if not rows and not result.errors:
        result.errors.append(CatalogueRowError(1, "", "The file holds no procedures."))
    if result.errors:
        return result
    with transaction.atomic():
        existing = {p.code: p for p in Procedure.objects.select_for_update().filter(institution=institution)}
        for _, row in rows:
            procedure = existing.get(row["code"]) or Procedure(institution=institution)
            (result.updated if procedure.pk and not procedure._state.adding else result.created).append(row["code"])
            for key, value in row.items():
                setattr(procedure, key, value)
            procedure.is_active = True
            procedure.save()
        audit.record(
            "worklist.procedure.imported",
            request=request,
            actor=acting_user,
            role=Role.INSTITUTION_ADMIN,
            institution=institution,
            object_type="worklist.procedure",
            detail={"created": result.created, "updated": result.updated, "encoding": result.encoding},
        )
    return result
