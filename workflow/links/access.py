"""Who sees which patient link, consent and suggestion, and when a linked hospital's studies may be compared.

The referral coordinators of either institution of a link see it and may
unlink it; those of the granting institution record and revoke a consent,
and those of the receiving institution see it and the suggestions it
brought. The studies themselves are opened only through the study access
rule (``archive.access``), reading the prior grants a reading task holds.
``access_*`` lookups answer 404 alike for missing and not yours.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from archive.models import Patient, Study
from pacs_cloud import access
from pacs_cloud.models import CLINICAL_ROLES, Role

from ..referrals.models import REFERRAL_SHARING_STATES, Referral
from .models import LinkSuggestion, PatientConsent, PatientLink

COORDINATOR = (Role.REFERRAL_COORDINATOR,)


def coordinator_institutions(user: Any) -> set[UUID]:
    return access.institution_ids(user, COORDINATOR)


def _get(qs: QuerySet, pk: object, what: str) -> Any:
    try:
        return qs.get(pk=UUID(str(pk)))
    except (ValueError, qs.model.DoesNotExist):
        raise Http404(f"No such {what}") from None


def visible_links(user: Any) -> QuerySet[PatientLink]:
    ids = coordinator_institutions(user)
    return PatientLink.objects.filter(Q(institution_id__in=ids) | Q(other_institution_id__in=ids))


def access_link(user: Any, pk: object) -> PatientLink:
    qs = visible_links(user).select_related("patient", "other_patient", "institution", "other_institution")
    return _get(qs, pk, "patient link")


def visible_consents(user: Any) -> QuerySet[PatientConsent]:
    ids = coordinator_institutions(user)
    return PatientConsent.objects.filter(Q(granting_institution_id__in=ids) | Q(receiving_institution_id__in=ids))


def access_consent(user: Any, pk: object) -> PatientConsent:
    qs = visible_consents(user).select_related("patient", "granting_institution", "receiving_institution")
    return _get(qs, pk, "consent")


def visible_suggestions(user: Any) -> QuerySet[LinkSuggestion]:
    """Suggestions for the caller's institutions (the receiving side of the consent that brought them)."""
    return LinkSuggestion.objects.filter(institution_id__in=coordinator_institutions(user))


def access_suggestion(user: Any, pk: object) -> LinkSuggestion:
    qs = visible_suggestions(user).select_related("patient", "candidate", "consent", "institution")
    return _get(qs, pk, "suggestion")


# Consent and comparison -------------------------------------------------------------


def consents_in_force(now: datetime) -> Q:
    return Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def consented_patients(patient_ids: list[Any], receiving_institution: Any, *, now: datetime | None = None) -> set[Any]:
    """Of ``patient_ids`` (patients of other hospitals), those whose studies ``receiving_institution`` may compare.

    The patient's consent is either a :class:`PatientConsent` in force for
    comparison, or the consent recorded on a referral of the patient to the
    receiving institution while it shares (sent to returned, before its
    ``share_until``); an emergency referral recorded no consent.
    """
    if not patient_ids:
        return set()
    now = now or timezone.now()
    receiver = getattr(receiving_institution, "pk", receiving_institution)
    own = PatientConsent.objects.filter(
        consents_in_force(now),
        patient_id__in=patient_ids,
        receiving_institution_id=receiver,
        scope=PatientConsent.Scope.COMPARISON,
    ).values_list("patient_id", flat=True)
    referred = (
        Referral.objects.filter(
            Q(share_until__isnull=True) | Q(share_until__gt=now),
            patient_id__in=patient_ids,
            to_institution_id=receiver,
            state__in=REFERRAL_SHARING_STATES,
            consent_recorded_at__isnull=False,
        )
        .exclude(consent_method=Referral.ConsentMethod.EMERGENCY)
        .values_list("patient_id", flat=True)
    )
    return set(own) | set(referred)


def linked_patients(patient_id: Any) -> dict[Any, Any]:
    """The patients actively linked with ``patient_id``: patient id → its institution id."""
    found: dict[Any, Any] = {}
    for link in PatientLink.objects.filter(
        Q(patient_id=patient_id) | Q(other_patient_id=patient_id), unlinked_at__isnull=True
    ).values("patient_id", "institution_id", "other_patient_id", "other_institution_id"):
        if link["patient_id"] == patient_id:
            found[link["other_patient_id"]] = link["other_institution_id"]
        else:
            found[link["patient_id"]] = link["institution_id"]
    return found


def comparable_patients(study: Study, *, now: datetime | None = None) -> list[Any]:
    """The linked patients at other hospitals whose studies may be compared with ``study``, right now."""
    linked = [pk for pk, inst in linked_patients(study.patient_id).items() if inst != study.institution_id]
    return sorted(consented_patients(linked, study.institution_id, now=now), key=str)


# Who looked -------------------------------------------------------------------------


def access_own_patient(user: Any, pk: object) -> Patient:
    """A patient of an institution where ``user`` holds a clinical role (the who-looked page's door)."""
    qs = Patient.objects.filter(institution_id__in=access.institution_ids(user, CLINICAL_ROLES))
    return _get(qs.select_related("institution"), pk, "patient")


# Audit events that are reads of one study's data or report (the viewer's, the
# archive's REST and DICOMweb, the reports').
_STUDY_OBJECTS = ("study", "archive.study")


def outside_reads(patient: Patient, *, limit: int = 200) -> list[dict[str, Any]]:
    """Who outside ``patient``'s hospital opened the patient's studies or reports there, newest first.

    Read from the audit trail: every opening by a user with no membership at
    the patient's institution (a linked hospital's reader, a referral's
    receiver, a reading centre's radiologist), whatever the route.
    """
    from pacs_cloud.models import AuditEvent, Membership

    study_ids = [str(pk) for pk in Study.objects.filter(patient=patient).values_list("pk", flat=True)]
    if not study_ids:
        return []
    members = Membership.objects.filter(institution_id=patient.institution_id).values("user_id")
    events = list(
        AuditEvent.objects.filter(
            Q(object_type__in=_STUDY_OBJECTS, object_id__in=study_ids)
            | Q(object_type="report", detail__study__in=study_ids),
            institution_id=patient.institution_id,
            outcome=AuditEvent.Outcome.SUCCESS,
            actor_id__isnull=False,
        )
        .exclude(actor_id__in=members)
        .order_by("-time", "-id")[:limit]
    )
    homes: dict[Any, list[str]] = {}
    for user_id, name in Membership.objects.filter(user_id__in={e.actor_id for e in events}).values_list(
        "user_id", "institution__name"
    ):
        if name not in homes.setdefault(user_id, []):
            homes[user_id].append(name)
    studies = {
        str(s.pk): s for s in Study.objects.filter(pk__in={e.detail.get("study") or e.object_id for e in events})
    }
    rows = []
    for event in events:
        study = studies.get(str(event.detail.get("study") or event.object_id))
        rows.append(
            {
                "time": event.time,
                "user": event.actor,
                "institutions": sorted(homes.get(event.actor_id, [])),
                "action": event.action,
                "object_type": event.object_type,
                "study": str(study.pk) if study else None,
                "study_date": study.study_date if study else None,
                "study_description": study.description if study else "",
                "as_prior": bool(event.detail.get("as_prior")),
                "client_address": event.client_address,
            }
        )
    return rows
