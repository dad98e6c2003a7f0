"""Who sees which referral and share, and what each side may do with it.

Built on ``pacs_cloud.access`` (roles) and ``archive.access`` (studies).
The referral coordinators and clinicians of the sending institution see its
referrals, those of the receiving institution once it is sent; ``access_referral`` answers 404 alike for missing and not
yours. A second-opinion share is seen by the study's own coordinators and
radiologists and, while it is in force, by the institution it is with.
Whether a shared study itself may be opened is the study access rule's
business (``archive.access``, reading the grants that the referral actions
have ``archive.actions`` write), not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet
from django.http import Http404
from django.urls import NoReverseMatch, reverse

from archive.access import visible_studies
from archive.models import Study
from pacs_cloud import access
from pacs_cloud.fsm import history
from pacs_cloud.models import Institution, Role

from .models import REFERRAL_SWEEP, Referral, StudyShare

# Roles that see an institution's referrals; only coordinators change them.
REFERRAL_ROLES = (Role.REFERRAL_COORDINATOR, Role.CLINICIAN)
# The receiving institution's roles that see a shared study (and so its reports).
SHARED_WITH_ROLES = (Role.CLINICIAN, Role.RADIOLOGIST, Role.REFERRAL_COORDINATOR)
# The study's own roles that share it for a second opinion and end the share.
SHARE_OWNER_ROLES = (Role.REFERRAL_COORDINATOR, Role.RADIOLOGIST)
# The receiving institution's roles that import a shared study into its archive.
IMPORT_ROLES = (Role.REFERRAL_COORDINATOR, Role.RADIOLOGIST)
REVOKE_REFUSED = "Only the study's institution ends a second-opinion share; a referral's ends with the referral."


# Referrals ------------------------------------------------------------------------


def visible_referrals(user: Any) -> QuerySet[Referral]:
    """Referrals of the caller's institutions: sent from them, or sent (not drafted) to them."""
    ids = access.institution_ids(user, REFERRAL_ROLES)
    if not ids:
        return Referral.objects.none()
    return Referral.objects.filter(
        Q(from_institution_id__in=ids) | (Q(to_institution_id__in=ids) & ~Q(state=Referral.State.DRAFT))
    )


def access_referral(user: Any, pk: object) -> Referral:
    try:
        return (
            visible_referrals(user)
            .select_related("patient", "from_institution", "to_institution", "created_by")
            .get(pk=UUID(str(pk)))
        )
    except (ValueError, Referral.DoesNotExist):
        raise Http404("No such referral") from None


def is_sender(user: Any, referral: Referral) -> bool:
    return access.has_role(user, referral.from_institution_id, Role.REFERRAL_COORDINATOR)


def is_receiver(user: Any, referral: Referral) -> bool:
    return referral.state != Referral.State.DRAFT and access.has_role(
        user, referral.to_institution_id, Role.REFERRAL_COORDINATOR
    )


def shows_patient(user: Any, referral: Referral, mine: set[Any] | None = None) -> bool:
    """The patient's identity: the sender always; the receiver unless it never took the patient.

    A receiver keeps the record of a patient it accepted; one whose referral
    was declined or cancelled before admission sees that it ended, not whom it
    was about.
    """
    if mine is None:
        mine = access.institution_ids(user, REFERRAL_ROLES)
    if referral.from_institution_id in mine:
        return True
    return referral.state not in (Referral.State.DECLINED, Referral.State.CANCELLED)


def acting_institution(user: Any, referral: Referral) -> Any:
    """The side the caller acts for (the sender when they belong to both)."""
    ids = access.institution_ids(user, REFERRAL_ROLES)
    return referral.from_institution_id if referral.from_institution_id in ids else referral.to_institution_id


def attachable_studies(user: Any, referral: Referral) -> QuerySet[Study]:
    """Studies the caller may attach: the sender's coordinators, studies of the referral's patient
    they can see at the sending institution; the receiver's, while the patient is in their care,
    their own institution's studies (images made there travel back with the patient)."""
    if is_sender(user, referral):
        return visible_studies(user).filter(institution_id=referral.from_institution_id, patient_id=referral.patient_id)
    if is_receiver(user, referral) and referral.state == Referral.State.IN_CARE:
        return visible_studies(user).filter(institution_id=referral.to_institution_id)
    return Study.objects.none()


def shared_study_ids(referral: Referral) -> set[Any]:
    return set(StudyShare.objects.filter(referral=referral, revoked_at__isnull=True).values_list("study_id", flat=True))


def allowed_actions(user: Any, referral: Referral, coordinating: set[Any] | None = None) -> list[str]:
    """What the caller may do to the referral now (the UI shows these buttons).

    ``coordinating``: the institutions where the caller is a referral
    coordinator, when already known (a list answers many rows).
    """
    S = Referral.State
    found: list[str] = []
    if coordinating is None:
        coordinating = access.institution_ids(user, [Role.REFERRAL_COORDINATOR])
    if referral.from_institution_id in coordinating:
        found += {
            S.DRAFT: ["consent", "attach", "detach", "send", "cancel"],
            S.SENT: ["attach", "cancel"],
            S.ACCEPTED: ["attach", "cancel"],
            S.IN_CARE: ["attach"],
            S.RETURNED: ["close"],
        }.get(referral.state, [])
        if referral.state == S.DRAFT and not referral.consent_recorded_at:
            found.remove("send")
    if referral.to_institution_id in coordinating and referral.state != S.DRAFT:
        found += {
            S.SENT: ["accept", "decline"],
            S.ACCEPTED: ["admit", "import"],
            S.IN_CARE: ["attach", "return", "import"],
            S.RETURNED: ["import"],
        }.get(referral.state, [])
    return found


# A referral's timeline (as both sides see it) ---------------------------------------------


@dataclass
class TimelineEntry:
    time: datetime
    kind: str  # "transition", "message" or "reminder"
    actor: str
    institution: str
    text: str
    source: str = ""
    target: str = ""


def timeline(referral: Referral) -> list[TimelineEntry]:
    """Every transition and message of the referral, oldest first (the caller may see the referral)."""
    names: dict[Any, str] = {
        referral.from_institution_id: referral.from_institution.name,
        referral.to_institution_id: referral.to_institution.name,
    }
    entries = [
        TimelineEntry(
            time=t.time,
            kind="transition",
            actor=(t.actor.display_name or t.actor.username) if t.actor else t.actor_label,
            institution=names.get(t.institution_id, ""),
            text=t.reason,
            source=t.source,
            target=t.target,
        )
        for t in history(referral)
    ]
    for m in referral.messages.select_related("author"):
        entries.append(
            TimelineEntry(
                time=m.created_at,
                kind=m.kind,
                actor=(m.author.display_name or m.author.username) if m.author else REFERRAL_SWEEP,
                institution=names.get(m.institution_id, ""),
                text=m.body,
            )
        )
    return sorted(entries, key=lambda e: e.time)


# Shares -----------------------------------------------------------------------------------


def visible_shares(user: Any) -> QuerySet[StudyShare]:
    """Shares the caller may see: every share of their institutions' studies, and those in force with them."""
    owners = access.institution_ids(user, list(SHARE_OWNER_ROLES))
    receivers = access.institution_ids(user, SHARED_WITH_ROLES)
    return StudyShare.objects.filter(
        Q(study__institution_id__in=owners) | Q(institution_id__in=receivers, revoked_at__isnull=True)
    ).select_related("institution", "study__patient", "study__institution")


def can_revoke_share(user: Any, share: StudyShare) -> bool:
    """A second-opinion share is ended by its study's coordinators or radiologists (twice is harmless)."""
    return share.kind == StudyShare.Kind.SECOND_OPINION and access.has_role(
        user, share.study.institution_id, *SHARE_OWNER_ROLES
    )


def can_import_share(user: Any, share: StudyShare) -> bool:
    """The institution a share in force is with may import its study (coordinators and radiologists)."""
    return share.revoked_at is None and share.institution_id in access.institution_ids(user, IMPORT_ROLES)


def active_share(study: Study, institution: Institution | Any) -> StudyShare | None:
    """The newest share of ``study`` in force with ``institution`` (an instance or its key), if any."""
    return (
        StudyShare.objects.filter(study=study, institution_id=getattr(institution, "pk", institution))
        .filter(revoked_at__isnull=True)
        .order_by("-granted_at")
        .first()
    )


def viewer_url(study_id: Any) -> str | None:
    """The study in the viewer (for a caller who may open it), once the viewer provides ``viewer-open-study``."""
    try:
        return reverse("viewer-open-study", args=[study_id])
    except NoReverseMatch:
        return None
