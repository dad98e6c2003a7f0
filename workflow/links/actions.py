"""Links, consents and suggestions: every change one ``do_*`` function, audited in its transaction.

The comparison grants themselves are the reading task's prior grants
(``workflow.actions``, ``workflow.TaskPrior``): a task claimed at the
receiving hospital lists the linked patient's relevant priors from the
granting hospital while the consent holds. Ending a consent, a referral or
a link withdraws them at once (:func:`withdraw_linked_priors`); the
periodic sweep (:func:`do_sweep_consents`) does the same for expiries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from archive.actions import grant_study_view, revoke_study_view
from archive.models import Patient
from archive.names import fold
from archive.priors.selection import select_priors
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.fsm import apply_transition
from pacs_cloud.models import Role

from ..models import HELD_STATES, ReadingTask, TaskPrior
from . import access
from .models import CONSENT_SWEEP, LinkSuggestion, PatientConsent, PatientLink

# A suggestion is made from this score up (of 100); see score_match.
SUGGESTION_THRESHOLD = 50
MAX_SUGGESTIONS = 20


class LinkRefused(Exception):
    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _coordinator_of(user: Any, institution_id: Any) -> bool:
    return core_access.has_role(user, institution_id, Role.REFERRAL_COORDINATOR)


def _audit(action: str, obj: Any, *, actor: Any, institution: Any, request: Any = None, **detail: Any) -> None:
    audit.record(
        f"workflow.{action}",
        request=request,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label="" if getattr(actor, "pk", None) else str(actor or ""),
        institution=institution,
        object_type=f"workflow.{type(obj).__name__.lower()}",
        object_id=obj.pk,
        detail={
            k: (str(v) if v is not None and not isinstance(v, (int, bool, list, dict)) else v)
            for k, v in detail.items()
        },
    )


# Matching ---------------------------------------------------------------------------


def _words(patient: Patient) -> set[str]:
    return {w for w in patient.name_words.split() if len(w) > 1}


def score_match(one: Patient, other: Patient) -> tuple[int, list[str]]:
    """How likely two hospitals' patients are one person (0-100), and why.

    National identifier (where both have one) 60, or disqualifying when they
    differ; birth date 25 (differing disqualifies without an identifier
    match); name 30 when a form is identical, 15 when name words overlap;
    sex 5, -20 when both are known and differ.
    """
    score, reasons = 0, []
    if one.national_id and other.national_id:
        if one.national_id != other.national_id:
            return 0, ["national identifier differs"]
        score += 60
        reasons.append("national identifier")
    if one.birth_date and other.birth_date:
        if one.birth_date == other.birth_date:
            score += 25
            reasons.append("birth date")
        elif score < 60:
            return 0, ["birth date differs"]
    names = [(fold(one.name_search), fold(other.name_search)), (one.name_ideographic, other.name_ideographic)]
    if any(a and a == b for a, b in names):
        score += 30
        reasons.append("name")
    elif _words(one) & _words(other):
        score += 15
        reasons.append("similar name")
    if one.sex and other.sex:
        if one.sex == other.sex:
            score += 5
            reasons.append("sex")
        else:
            score -= 20
            reasons.append("sex differs")
    return max(0, min(score, 100)), reasons


def _candidates(patient: Patient, institution_id: Any) -> list[Patient]:
    near = Q(pk__in=[])
    if patient.national_id:
        near |= Q(national_id=patient.national_id)
    if patient.birth_date:
        near |= Q(birth_date=patient.birth_date)
    if patient.name_search:
        near |= Q(name_search=patient.name_search)
    if patient.name_ideographic:
        near |= Q(name_ideographic=patient.name_ideographic)
    return list(Patient.objects.filter(near, institution_id=institution_id).order_by("pk")[:200])


def do_suggest_links(consent: PatientConsent) -> list[LinkSuggestion]:
    """Suggest the receiving institution's patients that may be the consented patient; links nothing.

    Patients already linked, or suggested before (confirmed or rejected),
    are not suggested again.
    """
    if not consent.in_force():
        return []
    source = consent.patient
    linked = set(access.linked_patients(source.pk))
    scored = []
    for candidate in _candidates(source, consent.receiving_institution_id):
        if candidate.pk in linked:
            continue
        score, reasons = score_match(source, candidate)
        if score >= SUGGESTION_THRESHOLD:
            scored.append((score, candidate, reasons))
    scored.sort(key=lambda row: (-row[0], str(row[1].pk)))
    made = []
    with transaction.atomic():
        for score, candidate, reasons in scored[:MAX_SUGGESTIONS]:
            suggestion, created = LinkSuggestion.objects.get_or_create(
                patient=candidate,
                candidate=source,
                defaults={
                    "consent": consent,
                    "institution_id": consent.receiving_institution_id,
                    "score": score,
                    "reasons": reasons,
                },
            )
            if created:
                made.append(suggestion)
        if made:
            _audit(
                "linksuggestion.create",
                consent,
                actor="patient matching",
                institution=consent.receiving_institution_id,
                suggestions=[str(s.pk) for s in made],
                scores=[s.score for s in made],
            )
    return made


# Links ------------------------------------------------------------------------------


def _create_link(
    one: Patient, other: Patient, *, source: str, acting_user: Any, request: Any = None, **extra: Any
) -> PatientLink:
    if one.institution_id == other.institution_id:
        raise LinkRefused("A link joins patients of two different institutions; merge patients of one instead.")
    first, second = sorted((one, other), key=lambda p: str(p.pk))
    existing = PatientLink.objects.filter(patient=first, other_patient=second, unlinked_at__isnull=True).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            link = PatientLink.objects.create(
                patient=first,
                institution_id=first.institution_id,
                other_patient=second,
                other_institution_id=second.institution_id,
                source=source,
                created_by=acting_user,
                **extra,
            )
            for patient in (first, second):
                _audit(
                    "patientlink.link",
                    link,
                    actor=acting_user,
                    institution=patient.institution_id,
                    request=request,
                    source=source,
                    patient=patient.patient_id,
                    linked_institution=(second if patient is first else first).institution_id,
                )
            grant_linked_priors([first.pk, second.pk])
    except IntegrityError:  # linked at the same moment by someone else
        return PatientLink.objects.get(patient=first, other_patient=second, unlinked_at__isnull=True)
    return link


def link_imported_study(imported: Any, *, acting_user: Any, request: Any = None) -> PatientLink:
    """Link the sender's patient with the receiver's one a referred or shared study was imported under.

    The coordinator or radiologist importing chose (or registered) the local
    patient for that very study: the import is the confirmation.
    """
    source = Patient.objects.get(pk=imported.source_study.patient_id)
    return _create_link(
        source,
        imported.patient,
        source=PatientLink.Source.REFERRAL_IMPORT,
        acting_user=acting_user,
        request=request,
        imported_study=imported,
    )


def do_link_patients(patient: Patient, other: Patient, *, acting_user: Any, request: Any = None) -> PatientLink:
    """A coordinator links their institution's ``patient`` with ``other``, a patient of another hospital.

    Precondition checked here: the actor coordinates at ``patient``'s
    institution, and ``other``'s hospital recorded the patient's consent
    (any scope, in force) for that institution: without it the caller could
    not know of ``other`` at all.
    """
    if not _coordinator_of(acting_user, patient.institution_id):
        raise LinkRefused("Only the patient's institution's referral coordinators link it.", "forbidden")
    consented = PatientConsent.objects.filter(
        access.consents_in_force(timezone.now()), patient=other, receiving_institution_id=patient.institution_id
    )
    if not consented.exists():
        raise LinkRefused("The other hospital has recorded no consent of this patient for your institution.")
    return _create_link(
        patient, other, source=PatientLink.Source.CONFIRMED_MATCH, acting_user=acting_user, request=request
    )


def do_confirm_suggestion(suggestion: LinkSuggestion, *, acting_user: Any, request: Any = None) -> PatientLink:
    """A coordinator of the receiving institution confirms a suggested match: the two patients are linked."""
    with transaction.atomic():
        locked = LinkSuggestion.objects.select_for_update().select_related("patient", "candidate").get(pk=suggestion.pk)
        if not _coordinator_of(acting_user, locked.institution_id):
            raise LinkRefused("Only the receiving institution's referral coordinators confirm a match.", "forbidden")
        if locked.state != LinkSuggestion.State.PENDING:
            raise LinkRefused(f"This suggestion is {locked.state} already.", "bad_state")
        if not locked.consent.in_force():
            raise LinkRefused("The consent that brought this suggestion has ended.", "bad_state")
        link = _create_link(
            locked.patient,
            locked.candidate,
            source=PatientLink.Source.CONFIRMED_MATCH,
            acting_user=acting_user,
            request=request,
            score=locked.score,
        )
        apply_transition(
            locked,
            "confirm",
            actor=acting_user,
            institution=locked.institution_id,
            update_fields=["decided_at", "decided_by", "link"],
            audit_detail={"score": locked.score, "link": str(link.pk)},
            now=timezone.now(),
            user=acting_user,
            link=link,
        )
    return link


def do_reject_suggestion(suggestion: LinkSuggestion, *, acting_user: Any, request: Any = None) -> LinkSuggestion:
    """Not the same person: the suggestion is closed and not made again."""
    with transaction.atomic():
        locked = LinkSuggestion.objects.select_for_update().get(pk=suggestion.pk)
        if not _coordinator_of(acting_user, locked.institution_id):
            raise LinkRefused("Only the receiving institution's referral coordinators reject a match.", "forbidden")
        try:
            apply_transition(
                locked,
                "reject",
                actor=acting_user,
                institution=locked.institution_id,
                update_fields=["decided_at", "decided_by"],
                audit_detail={"score": locked.score},
                now=timezone.now(),
                user=acting_user,
            )
        except TransitionNotAllowed:
            raise LinkRefused(f"This suggestion is {locked.state} already.", "bad_state") from None
    return locked


def do_unlink_patients(link: PatientLink, *, acting_user: Any, reason: str = "", request: Any = None) -> PatientLink:
    """End a link (a coordinator of either institution); the linked priors it gave are withdrawn at once."""
    with transaction.atomic():
        locked = PatientLink.objects.select_for_update().select_related("patient", "other_patient").get(pk=link.pk)
        if not (
            _coordinator_of(acting_user, locked.institution_id)
            or _coordinator_of(acting_user, locked.other_institution_id)
        ):
            raise LinkRefused("Only the two institutions' referral coordinators unlink.", "forbidden")
        if locked.unlinked_at is not None:
            return locked
        locked.unlinked_at = timezone.now()
        locked.unlinked_by = acting_user
        locked.unlink_reason = reason.strip()[:200]
        locked.save(update_fields=["unlinked_at", "unlinked_by", "unlink_reason"])
        for patient, other in ((locked.patient, locked.other_patient), (locked.other_patient, locked.patient)):
            _audit(
                "patientlink.unlink",
                locked,
                actor=acting_user,
                institution=patient.institution_id,
                request=request,
                patient=patient.patient_id,
                linked_institution=other.institution_id,
                reason=locked.unlink_reason,
            )
        withdraw_linked_priors([locked.patient_id, locked.other_patient_id], reason="unlinked")
    return locked


# Consents ---------------------------------------------------------------------------


def do_record_patient_consent(
    patient: Patient,
    *,
    receiving_institution: Any,
    acting_user: Any,
    scope: str = PatientConsent.Scope.COMPARISON,
    method: str = PatientConsent.Method.WRITTEN,
    note: str = "",
    expires_at: datetime | None = None,
    request: Any = None,
) -> PatientConsent:
    """Record a patient's consent at their hospital that ``receiving_institution`` may use its records.

    Precondition checked here: the actor is a referral coordinator of the
    patient's institution. Suggestions of the receiver's matching patients
    follow (never a link by themselves).
    """
    receiver = getattr(receiving_institution, "pk", receiving_institution)
    if not _coordinator_of(acting_user, patient.institution_id):
        raise LinkRefused("Only the patient's institution's referral coordinators record consent.", "forbidden")
    if receiver == patient.institution_id:
        raise LinkRefused("Consent is given for another institution.")
    if scope not in PatientConsent.Scope.values or method not in PatientConsent.Method.values:
        raise LinkRefused("Unknown scope or method of consent.")
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise LinkRefused("The consent would have expired already.")
    with transaction.atomic():
        consent = PatientConsent.objects.create(
            patient=patient,
            granting_institution_id=patient.institution_id,
            receiving_institution_id=receiver,
            scope=scope,
            method=method,
            note=note.strip()[:500],
            recorded_by=acting_user,
            recorded_at=now,
            expires_at=expires_at,
        )
        _audit(
            "patientconsent.record",
            consent,
            actor=acting_user,
            institution=patient.institution_id,
            request=request,
            patient=patient.patient_id,
            receiving_institution=receiver,
            scope=scope,
            method=method,
            expires_at=expires_at.isoformat() if expires_at else None,
        )
        grant_linked_priors([patient.pk])
    do_suggest_links(consent)
    return consent


def do_revoke_patient_consent(
    consent: PatientConsent,
    *,
    acting_user: Any = None,
    actor_label: str = "",
    reason: str = "",
    request: Any = None,
    now: datetime | None = None,
) -> bool:
    """End a consent (the granting institution's coordinators, or the expiry sweep); withdraws its priors at once.

    Returns whether this call ended it (False: it had ended already).
    """
    now = now or timezone.now()
    with transaction.atomic():
        locked = PatientConsent.objects.select_for_update().select_related("patient").get(pk=consent.pk)
        if acting_user is not None and not _coordinator_of(acting_user, locked.granting_institution_id):
            raise LinkRefused("Only the granting institution's referral coordinators revoke a consent.", "forbidden")
        if locked.revoked_at is not None:
            return False
        locked.revoked_at = now
        locked.revoked_by = acting_user
        locked.revoke_reason = reason.strip()[:200]
        locked.save(update_fields=["revoked_at", "revoked_by", "revoke_reason"])
        _audit(
            "patientconsent.revoke",
            locked,
            actor=acting_user or actor_label,
            institution=locked.granting_institution_id,
            request=request,
            patient=locked.patient.patient_id,
            receiving_institution=locked.receiving_institution_id,
            reason=locked.revoke_reason,
        )
        withdraw_linked_priors([locked.patient_id], reason="consent ended", now=now)
    return True


def do_sweep_consents(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic sweep: consents past their expiry are ended, and every linked prior is checked again.

    The second part also catches a referral whose ``share_until`` passed.
    Safe to run twice.
    """
    now = now or timezone.now()
    expired = 0
    due = PatientConsent.objects.filter(revoked_at__isnull=True, expires_at__lte=now).order_by("expires_at")
    for consent in due.iterator():
        expired += do_revoke_patient_consent(consent, actor_label=CONSENT_SWEEP, reason="expired", now=now)
    return {"consents_expired": expired, "priors_withdrawn": withdraw_linked_priors(None, reason="sweep", now=now)}


# Grants and withdrawal ----------------------------------------------------------------


def grant_linked_priors(patient_ids: list[Any]) -> int:
    """Give the readers holding tasks on these patients' linked studies the priors a new link or consent allows.

    A task claimed before the link or consent existed gets them now, as if
    claimed after (the same selection and grant as the claim). Returns the
    number of task priors added.
    """
    reading = set(patient_ids)
    for pk in patient_ids:
        reading.update(access.linked_patients(pk))
    added = 0
    tasks = ReadingTask.objects.filter(
        state__in=HELD_STATES, study__patient_id__in=reading, claimed_by__isnull=False
    ).select_related("study")
    for task in tasks:
        linked = access.comparable_patients(task.study)
        if not linked:
            continue
        have = set(TaskPrior.objects.filter(task=task).values_list("study_id", flat=True))
        new = [
            p
            for p in select_priors(task.study, linked_patients=linked)
            if p.pk not in have and p.institution_id != task.institution_id
        ]
        TaskPrior.objects.bulk_create([TaskPrior(task=task, study=prior) for prior in new], ignore_conflicts=True)
        for prior in new:
            grant_study_view(prior, user=task.claimed_by_id, as_prior=True)
            audit.record(
                "workflow.taskprior.grant",
                actor_label="patient links",
                institution=task.institution_id,
                object_type="workflow.readingtask",
                object_id=task.pk,
                detail={"prior": str(prior.pk), "reader": task.claimed_by_id, "reason": "link or consent"},
            )
        added += len(new)
    return added


# Withdrawal -------------------------------------------------------------------------


def withdraw_linked_priors(patient_ids: list[Any] | None, *, reason: str, now: datetime | None = None) -> int:
    """Take back every prior of another hospital that a reading task holds without a link and consent for it.

    ``patient_ids``: only priors of these patients (or held for their
    studies); None checks all. A prior stays granted while another task of
    the same reader still lists it rightly. Returns the number of task priors
    withdrawn.
    """
    now = now or timezone.now()
    rows = TaskPrior.objects.exclude(study__institution_id=F("task__institution_id")).values_list(
        "pk", "task_id", "task__claimed_by_id", "task__study__patient_id", "task__institution_id",
        "study_id", "study__patient_id",
    )  # fmt: skip
    if patient_ids is not None:
        rows = rows.filter(Q(study__patient_id__in=patient_ids) | Q(task__study__patient_id__in=patient_ids))
    withdrawn: list[tuple[Any, Any, Any, Any]] = []
    allowed: dict[tuple[Any, Any], set[Any]] = {}
    for pk, task_id, holder, reading_patient, reading_institution, study_id, prior_patient in rows:
        key = (reading_patient, reading_institution)
        if key not in allowed:
            linked = [p for p, inst in access.linked_patients(reading_patient).items() if inst != reading_institution]
            allowed[key] = access.consented_patients(linked, reading_institution, now=now)
        if prior_patient not in allowed[key]:
            withdrawn.append((pk, task_id, holder, study_id))
    if not withdrawn:
        return 0
    with transaction.atomic():
        TaskPrior.objects.filter(pk__in=[row[0] for row in withdrawn]).delete()
        for _, task_id, holder, study_id in withdrawn:
            if holder is None:
                continue
            still = TaskPrior.objects.filter(
                study_id=study_id,
                task__claimed_by_id=holder,
                task__state__in=[*HELD_STATES, ReadingTask.State.FINAL],
            ).exists()
            if not still:
                revoke_study_view(study_id, user=holder, as_prior=True)
            audit.record(
                "workflow.taskprior.withdraw",
                actor_label="patient links",
                institution=ReadingTask.objects.filter(pk=task_id).values_list("institution_id", flat=True).first(),
                object_type="workflow.readingtask",
                object_id=task_id,
                detail={"prior": str(study_id), "reader": holder, "reason": reason},
            )
    return len(withdrawn)
