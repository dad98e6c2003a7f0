"""Every change to reports: drafts, autosave, signing, addenda, critical results.

Each ``do_*`` runs in one transaction on locked rows, applies Report
transitions through ``pacs_cloud.fsm.apply_transition`` and schedules side
effects (exports, pushes, e-mail) after commit.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db import IntegrityError, transaction
from django.utils import timezone

from archive import names
from archive.access import seen_as_prior
from archive.actions import do_mark_study_reported
from archive.models import Instance, Study
from pacs_cloud import audit, metering, push
from pacs_cloud.fsm import apply_transition
from pacs_cloud.lib.local_time import format_local
from pacs_cloud.metering.models import Metric
from pacs_cloud.models import Membership, Role, User

from . import exports, signing
from .access import held_task, may_author
from .models import (
    SECTIONS,
    CriticalResult,
    DraftRevision,
    Report,
    ReportExport,
    ReportTemplate,
    ReportVersion,
    empty_content,
)

log = logging.getLogger(__name__)
MAX_SECTION = 20_000
MAX_KEY_IMAGES = 24
CRITICAL_TOPIC = "reports.critical"
REPORT_TOPIC = "reports.report"


class ReportRefused(Exception):
    """A request the report's state or the caller's rights do not allow; ``code`` names why."""

    def __init__(self, message: str, code: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class DraftConflict(ReportRefused):
    """The draft moved on since the caller's revision (another tab, another device)."""

    def __init__(self, report: Report) -> None:
        super().__init__("The draft was saved elsewhere since you loaded it.", "conflict")
        self.report = report


# Templates -------------------------------------------------------------------------


def templates_for(study: Study) -> list[ReportTemplate]:
    """The study hospital's active templates that apply to it, the most specific first.

    The exam's procedure decides: with an order, its procedure code and body
    part (the images' Body Part Examined is often missing, or names the
    scout); without one, the images' modalities and body parts.
    """
    from worklist.facts import study_order_facts

    series = list(study.series.values_list("modality", "body_part"))
    modalities = {m.upper() for m, _ in series if m} | {m.upper() for m in study.image_modalities}
    parts = {b.upper() for _, b in series if b}
    codes: set[str] = set()
    order = study_order_facts(study)
    if order is not None:
        modalities |= {order.modality.upper()} if order.modality else set()
        parts = {order.body_part.upper()} if order.body_part else parts
        codes = {order.procedure_code.upper()}
    rows = [
        t
        for t in ReportTemplate.objects.filter(institution_id=study.institution_id, is_active=True)
        if (not t.modality or t.modality.upper() in modalities)
        and (not t.body_part or t.body_part.upper() in parts)
        and (not t.procedure_code or t.procedure_code.upper() in codes)
    ]
    return sorted(rows, key=lambda t: (-t.specificity(), t.name))


def clean_template_sections(sections: Any) -> dict[str, str]:
    if not isinstance(sections, dict):
        raise ReportRefused("sections must be an object", "invalid", 400)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ReportRefused(f"unknown sections: {', '.join(sorted(unknown))}", "invalid", 400)
    return {k: str(sections.get(k, ""))[:MAX_SECTION] for k in SECTIONS}


def clean_macros(macros: Any) -> list[dict[str, str]]:
    if not isinstance(macros, list):
        raise ReportRefused("macros must be a list", "invalid", 400)
    out = []
    for m in macros:
        if not isinstance(m, dict) or m.get("section") not in SECTIONS or not m.get("name"):
            raise ReportRefused("each macro needs a name, a section and a text", "invalid", 400)
        out.append(
            {"name": str(m["name"])[:100], "section": m["section"], "text": str(m.get("text", ""))[:MAX_SECTION]}
        )
    return out


TEMPLATE_FIELDS = ("name", "modality", "procedure_code", "body_part", "sections", "macros", "is_active")


def _template_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Validated template fields from ``values`` (only the keys present); raises :class:`ReportRefused`."""
    unknown = set(values) - set(TEMPLATE_FIELDS)
    if unknown:
        raise ReportRefused(f"unknown template fields: {', '.join(sorted(unknown))}", "invalid", 400)
    out = dict(values)
    if "name" in out:
        out["name"] = str(out["name"] or "").strip()[:200]
        if not out["name"]:
            raise ReportRefused("A template needs a name.", "invalid", 400)
    if "sections" in out:
        out["sections"] = clean_template_sections(out["sections"])
    if "macros" in out:
        out["macros"] = clean_macros(out["macros"])
    return out


def _save_template(row: ReportTemplate, **save: Any) -> None:
    # The savepoint keeps the caller's transaction usable after a duplicate name.
    try:
        with transaction.atomic():
            row.save(**save)
    except IntegrityError:
        raise ReportRefused(f"This hospital already has a template called {row.name}.", "invalid", 400) from None


def do_create_report_template(
    institution_id: Any, *, acting_user: Any, request: Any = None, **fields: Any
) -> ReportTemplate:
    """A new template of the institution (the caller keeps its templates). Raises :class:`ReportRefused`."""
    values = _template_fields(fields)
    if "name" not in values:
        raise ReportRefused("A template needs a name.", "invalid", 400)
    row = ReportTemplate(institution_id=institution_id, created_by=acting_user, **values)
    with transaction.atomic():
        _save_template(row, force_insert=True)
        _audit_template("report_template.create", row, acting_user, request)
    return row


def do_change_report_template(
    template: ReportTemplate, *, acting_user: Any, request: Any = None, **fields: Any
) -> ReportTemplate:
    """Change the given fields of a template; it stays at its institution. Raises :class:`ReportRefused`."""
    institution_id = fields.pop("institution_id", template.institution_id)
    if str(institution_id) != str(template.institution_id):
        raise ReportRefused("A template stays at its hospital; make a new one there.", "invalid", 400)
    values = _template_fields(fields)
    with transaction.atomic():
        locked = ReportTemplate.objects.select_for_update().get(pk=template.pk)
        for field, value in values.items():
            setattr(locked, field, value)
        _save_template(locked, update_fields=list(values))
        _audit_template("report_template.update", locked, acting_user, request, fields=sorted(values))
    return locked


def do_deactivate_report_template(template: ReportTemplate, *, acting_user: Any, request: Any = None) -> None:
    """Withdraw a template from new reports; reports written from it keep their text."""
    with transaction.atomic():
        locked = ReportTemplate.objects.select_for_update().get(pk=template.pk)
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        _audit_template("report_template.deactivate", locked, acting_user, request)


def _audit_template(action: str, row: ReportTemplate, acting_user: Any, request: Any, **detail: Any) -> None:
    audit.record(
        action,
        request=request,
        actor=acting_user,
        institution=row.institution_id,
        object_type="report_template",
        object_id=row.pk,
        detail=detail or None,
    )


# Drafts ----------------------------------------------------------------------------


def _search_name(name: str) -> str:
    """The lookup's matching form of a patient name: every word, in every group (:mod:`archive.names`)."""
    return names.name_forms(name).words[:324]


def _identity_fields(study: Study) -> dict[str, Any]:
    patient = study.patient
    return {
        "patient_id": patient.patient_id,
        "patient_name": patient.name,
        "patient_name_search": _search_name(patient.name),
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "modality": "\\".join(study.image_modalities),
        "description": study.description[:200],
    }


def do_create_report(
    study: Study, *, acting_user: Any, template: ReportTemplate | None = None, request: Any = None
) -> tuple[Report, bool]:
    """Open the caller's report on ``study`` (a new draft, from ``template`` if given), or their existing one.

    The caller must be allowed to write it (:func:`reports.access.may_author`).
    Starting a draft moves the caller's claimed reading task to *drafting*.
    """
    if not may_author(acting_user, study):
        raise ReportRefused(
            "Only a radiologist of the hospital or the holder of a reading task writes its report.", "not_author", 403
        )
    if template is not None and template.institution_id != study.institution_id:
        raise ReportRefused("That template belongs to another hospital.", "invalid", 400)
    task = held_task(acting_user, study)
    with transaction.atomic():
        existing = (
            Report.objects.select_for_update()
            .filter(study=study, author=acting_user, state__in=[Report.State.DRAFT, Report.State.PRELIMINARY])
            .first()
        )
        if existing is not None:
            return existing, False
        draft = empty_content()
        if template is not None:
            draft.update(clean_template_sections(template.sections))
        now = timezone.now()
        report = Report.objects.create(
            institution_id=study.institution_id,
            study=study,
            reading_task=task,
            template=template,
            author=acting_user,
            draft=draft,
            draft_saved_at=now,
            created_at=now,
            updated_at=now,
            **_identity_fields(study),
        )
        DraftRevision.objects.create(report=report, revision=0, kind="report", content=draft, saved_by=acting_user)
        audit.record(
            "report.create",
            request=request,
            actor=acting_user,
            institution=study.institution_id,
            object_type="report",
            object_id=report.pk,
            patient_id=study.patient.patient_id,
            detail={"study": str(study.pk), "template": str(template.pk) if template else None},
        )
        if task is not None and task.state == "claimed":
            from workflow.actions import do_mark_task_drafting

            do_mark_task_drafting(task, acting_user=acting_user)
    return report, True


def _clean_content(content: Any, study: Study) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise ReportRefused("content must be an object", "invalid", 400)
    out: dict[str, Any] = {}
    for key in (*SECTIONS, "addendum"):
        value = content.get(key, "")
        if not isinstance(value, str):
            raise ReportRefused(f"{key} must be text", "invalid", 400)
        if len(value) > MAX_SECTION:
            raise ReportRefused(f"{key} is longer than {MAX_SECTION} characters", "invalid", 400)
        out[key] = value
    images = content.get("key_images", [])
    if not isinstance(images, list) or len(images) > MAX_KEY_IMAGES:
        raise ReportRefused(f"key_images must be a list of at most {MAX_KEY_IMAGES}", "invalid", 400)
    chosen = []
    ids = []
    for item in images:
        if not isinstance(item, dict):
            raise ReportRefused("each key image names an instance and a frame", "invalid", 400)
        try:
            ids.append(uuid.UUID(str(item.get("instance"))))
            frame = int(item.get("frame", 1))
        except (ValueError, TypeError):
            raise ReportRefused("each key image names an instance and a frame", "invalid", 400) from None
        chosen.append({"instance": str(ids[-1]), "frame": frame, "note": str(item.get("note", ""))[:500]})
    if ids:
        found: dict[str, int] = {
            str(pk): frames
            for pk, frames in Instance.objects.filter(pk__in=ids, series__study=study).values_list(
                "pk", "number_of_frames"
            )
        }
        for item in chosen:
            frames = found.get(str(item["instance"]))
            if frames is None or not 1 <= int(str(item["frame"])) <= max(frames, 1):
                raise ReportRefused("a key image is not an image of this study", "invalid", 400)
    out["key_images"] = chosen
    return out


def _refuse_if_closed(report: Report) -> None:
    if report.state in (Report.State.FINAL, Report.State.AMENDED) and report.draft_kind not in (
        Report.DraftKind.ADDENDUM,
        Report.DraftKind.AMENDMENT,
    ):
        raise ReportRefused("This report is final and cannot be edited; write an addendum or an amendment.", "final")


def _check_writer(report: Report, user: Any) -> None:
    if report.author_id != user.pk and not may_author(user, report.study):
        raise ReportRefused("Only the report's author or another reader of the study may edit it.", "not_author", 403)


def do_autosave_draft(
    report: Report, *, acting_user: Any, content: Any, base_revision: int | None, request: Any = None
) -> Report:
    """Save the draft as a new revision; refused with :class:`DraftConflict` when ``base_revision`` is stale.

    Every revision is kept (``DraftRevision``), so an editor that lost its tab
    or its link recovers the latest one, and nothing typed is overwritten
    silently by another tab.
    """
    _check_writer(report, acting_user)
    with transaction.atomic():
        locked = Report.objects.select_for_update().select_related("study").get(pk=report.pk)
        _refuse_if_closed(locked)
        if base_revision is not None and base_revision != locked.draft_revision:
            raise DraftConflict(locked)
        clean = _clean_content(content, locked.study)
        now = timezone.now()
        locked.draft = clean
        locked.draft_revision += 1
        locked.draft_saved_at = locked.updated_at = now
        locked.save(update_fields=["draft", "draft_revision", "draft_saved_at", "updated_at"])
        DraftRevision.objects.create(
            report=locked,
            revision=locked.draft_revision,
            kind=locked.draft_kind or "report",
            content=clean,
            saved_by=acting_user,
            saved_at=now,
        )
    return locked


def do_open_addendum(report: Report, *, acting_user: Any, kind: str, request: Any = None) -> Report:
    """Open an addendum (text added below) or an amendment (the sections re-edited) on a final report."""
    if kind not in (Report.DraftKind.ADDENDUM, Report.DraftKind.AMENDMENT):
        raise ReportRefused("kind is addendum or amendment", "invalid", 400)
    _check_writer(report, acting_user)
    with transaction.atomic():
        locked = Report.objects.select_for_update().get(pk=report.pk)
        if locked.state not in (Report.State.FINAL, Report.State.AMENDED):
            raise ReportRefused("Only a final report takes an addendum or an amendment.", "not_final")
        if locked.draft_kind in (Report.DraftKind.ADDENDUM, Report.DraftKind.AMENDMENT):
            return locked
        latest = locked.versions.order_by("-number").first()
        assert latest is not None
        draft = {**empty_content(), **{k: latest.content.get(k, "") for k in SECTIONS}}
        draft["key_images"] = [
            {"instance": k["instance"], "frame": k["frame"], "note": k.get("note", "")} for k in latest.key_images
        ]
        locked.draft_kind = kind
        locked.draft = draft
        locked.draft_revision += 1
        locked.draft_saved_at = locked.updated_at = timezone.now()
        locked.save(update_fields=["draft", "draft_kind", "draft_revision", "draft_saved_at", "updated_at"])
        DraftRevision.objects.create(
            report=locked, revision=locked.draft_revision, kind=kind, content=draft, saved_by=acting_user
        )
        audit.record(
            f"report.open_{kind}",
            request=request,
            actor=acting_user,
            institution=locked.institution_id,
            object_type="report",
            object_id=locked.pk,
            patient_id=locked.patient_id,
        )
    return locked


# Signing ---------------------------------------------------------------------------


def _key_images_as_signed(report: Report, chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = {
        str(i.pk): i
        for i in Instance.objects.filter(
            pk__in=[c["instance"] for c in chosen], series__study_id=report.study_id
        ).select_related("series")
    }
    out = []
    for c in chosen:
        instance = rows.get(c["instance"])
        if instance is None:
            raise ReportRefused("a key image is no longer in the archive", "invalid", 400)
        out.append(
            {
                "instance": c["instance"],
                "study_instance_uid": report.study.study_instance_uid,
                "series_instance_uid": instance.series.series_instance_uid,
                "sop_instance_uid": instance.sop_instance_uid,
                "frame": c["frame"],
                "sha256": instance.sha256,
                "note": c.get("note", ""),
            }
        )
    return out


def _signed_content(report: Report, latest: ReportVersion | None, now: Any, signer_name: str) -> dict[str, str]:
    draft = report.draft
    if report.draft_kind == Report.DraftKind.ADDENDUM and latest is not None:
        text = draft.get("addendum", "").strip()
        if not text:
            raise ReportRefused("The addendum is empty.", "empty", 400)
        earlier = latest.content.get("addendum", "")
        stamp = f"Addendum {format_local(now, report.institution.time_zone)}, {signer_name}:"
        content = {k: latest.content.get(k, "") for k in SECTIONS}
        content["addendum"] = (earlier + "\n\n" if earlier else "") + f"{stamp}\n{text}"
        return content
    content = {k: draft.get(k, "") for k in SECTIONS}
    content["addendum"] = latest.content.get("addendum", "") if latest is not None else ""
    if not (content["findings"].strip() or content["impression"].strip()):
        raise ReportRefused("A report needs findings or an impression before it is signed.", "empty", 400)
    return content


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.upper())


def referring_clinician(report: Report) -> User | None:
    """The clinician of the study's hospital named as referring physician on its order or study, if any."""
    names = [n for n in report.study.orders.values_list("referring_physician", flat=True) if n]
    if report.study.referring_physician:
        names.append(report.study.referring_physician)
    # A PN's alphabetic group (FAMILY^GIVEN=漢字) against a person's name in any order
    # ("Dr Huang Lei"): every word of the PN must be among the name's words.
    wanted = [set(_words(n.split("=")[0])) for n in names]
    wanted = [w for w in wanted if w]
    if not wanted:
        return None
    clinicians = User.objects.filter(
        memberships__institution_id=report.institution_id,
        memberships__role=Role.CLINICIAN,
        memberships__is_active=True,
        is_active=True,
    ).distinct()
    for user in clinicians:
        for label in (user.display_name, user.get_full_name()):
            if label and any(w <= set(_words(label)) for w in wanted):
                return user
    return None


def _password_ok(user: Any, password: str, request: Any) -> bool:
    """Re-authentication for a signature: through the sign-in backends (lockouts count) for a request."""
    if not password:
        return False
    if request is None:  # a command or the demo acting for the user
        return bool(user.check_password(password))
    django_request = getattr(request, "_request", request)
    again = authenticate(django_request, username=user.get_username(), password=password)
    return again is not None and again.pk == user.pk


def _reauthenticate(user: Any, password: str, request: Any) -> dict[str, Any]:
    """The signer proves it is them: the password again, or an open signing window.

    A password, when given, is always checked (through the sign-in backends,
    so failures count toward the lockout) and, if right, opens or restarts the
    window of the caller's session or token; a wrong one also closes it.
    Without a password the window must be open. Returns the audit detail
    saying which it was; raises :class:`ReportRefused` (403) otherwise.
    """
    if password:
        if _password_ok(user, password, request):
            until = signing.open_window(request, user)
            return {"reauthenticated": "password", "window_until": until.isoformat() if until else None}
        signing.close_window(request, user)
        raise ReportRefused("The password is not correct.", "password", 403)
    until = signing.window_until(request, user)
    if until is None:
        raise ReportRefused("Enter your password to sign.", "password_required", 403)
    return {"reauthenticated": "window", "window_until": until.isoformat()}


def do_sign_report(
    report: Report,
    *,
    acting_user: Any,
    password: str = "",
    request: Any = None,
    preliminary: bool = False,
    base_revision: int | None = None,
    critical: bool = False,
    critical_note: str = "",
    recipient: User | None = None,
) -> ReportVersion:
    """Re-authenticate the signer, sign the draft's canonical form and record the new version.

    * the signer gives the password again, or signs inside the signing
      window a correct password opened for the same session or token
      (``REPORTS_SIGN_WINDOW_SECONDS``; see :mod:`reports.signing`); the
      signature's audit event says which;
    * a draft becomes *preliminary* (``preliminary=True``) or *final*;
    * an open addendum or amendment of a final report becomes a new version
      and the report *amended*; earlier versions are untouched;
    * a final signature moves the reading task to final, completes the study's
      orders and marks the study reported;
    * ``critical`` opens a :class:`CriticalResult` for the referring clinician.

    Raises :class:`ReportRefused` (status 403 for a wrong password, or none
    outside a window: code ``password_required``); every refusal is audited.
    """
    try:
        return _sign(
            report,
            acting_user=acting_user,
            password=password,
            request=request,
            preliminary=preliminary,
            base_revision=base_revision,
            critical=critical,
            critical_note=critical_note,
            recipient=recipient,
        )
    except ReportRefused as refusal:
        # Recorded after the refused transaction rolled back, so the attempt stays on record.
        audit.record(
            "report.sign_refused",
            request=request,
            actor=acting_user,
            institution=report.institution_id,
            object_type="report",
            object_id=report.pk,
            outcome="denied" if refusal.status == 403 else "failure",
            detail={"reason": refusal.code, "preliminary": preliminary},
        )
        raise


def _sign(
    report: Report,
    *,
    acting_user: Any,
    password: str,
    request: Any,
    preliminary: bool,
    base_revision: int | None,
    critical: bool,
    critical_note: str,
    recipient: User | None,
) -> ReportVersion:
    _check_writer(report, acting_user)
    username = acting_user.get_username()
    reauthenticated = _reauthenticate(acting_user, password, request)
    key = signing.active_key(acting_user)
    with transaction.atomic():
        locked = Report.objects.select_for_update().select_related("study__patient").get(pk=report.pk)
        if base_revision is not None and base_revision != locked.draft_revision:
            raise DraftConflict(locked)
        addendum = locked.draft_kind in (Report.DraftKind.ADDENDUM, Report.DraftKind.AMENDMENT)
        if locked.state in (Report.State.FINAL, Report.State.AMENDED) and not addendum:
            raise ReportRefused("This report is already final; write an addendum or an amendment.", "final")
        if preliminary and locked.state != Report.State.DRAFT:
            raise ReportRefused("Only a draft can be issued as preliminary.", "bad_state")
        latest = locked.versions.order_by("-number").first()
        now = timezone.now()
        signer_name = str(acting_user)
        content = _signed_content(locked, latest, now, signer_name)
        key_images = _key_images_as_signed(locked, locked.draft.get("key_images", []))
        if addendum:
            kind, method = str(locked.draft_kind), "amend"
        elif preliminary:
            kind, method = ReportVersion.Kind.PRELIMINARY, "issue_preliminary"
        else:
            kind, method = ReportVersion.Kind.FINAL, "sign_final"
        version = ReportVersion(
            report=locked,
            number=(latest.number + 1) if latest else 1,
            kind=kind,
            content=content,
            key_images=key_images,
            signer=acting_user,
            signer_name=signer_name,
            signing_key=key,
            signed_at=now,
            previous_sha256=latest.canonical_sha256 if latest else "",
            is_critical=critical,
        )
        # The Encapsulated PDF that the export archives carries this UID (see reports.exports).
        version.dicom_sop_instance_uid = exports.uid_of(version.pk)
        form = signing.canonical_form(
            report_id=locked.pk,
            version_id=version.pk,
            number=version.number,
            kind=kind,
            institution_id=locked.institution_id,
            study=signing.study_identity(locked.study),
            content=content,
            key_images=key_images,
            signer={"username": username, "name": signer_name, "key": key.fingerprint},
            signed_at=now,
            previous_sha256=version.previous_sha256,
        )
        version.canonical = form
        version.canonical_sha256 = hashlib.sha256(form).hexdigest()
        version.signature = signing.sign(key, form)
        version.verification_code = signing.verification_code(bytes(version.signature))
        version.save(force_insert=True)
        locked.is_critical = locked.is_critical or critical
        apply_transition(
            locked,
            method,
            actor=acting_user,
            institution=locked.institution_id,
            reason=f"version {version.number} signed",
            update_fields=["signed_at", "updated_at", "draft_kind", "is_critical"],
            audit_detail={
                "version": version.number,
                "kind": kind,
                "code": version.verification_code,
                **reauthenticated,
            },
            now=now,
        )
        if kind != ReportVersion.Kind.PRELIMINARY:
            _complete_reading(locked, acting_user, amended=addendum)
            # Final signatures, addenda and amendments are metered; a preliminary is not.
            metering.record_usage(locked.institution_id, Metric.REPORTS_SIGNED)
        else:
            _task_step(locked, acting_user, "preliminary")
        if critical:
            _open_critical_result(locked, version, acting_user, critical_note, recipient or referring_clinician(locked))
        _queue_exports(version)
        push.notify(
            push.institution_group(locked.institution_id, Role.CLINICIAN),
            REPORT_TOPIC,
            {"id": str(locked.pk), "state": locked.state, "version": version.number},
        )
    return version


def _task_step(report: Report, user: Any, step: str) -> None:
    from workflow.actions import TaskRefused, do_finalize_task, do_mark_task_preliminary

    task = report.reading_task
    if task is None or task.claimed_by_id != user.pk:
        task = held_task(user, report.study)
    if task is None:
        return
    try:
        if step == "final":
            do_finalize_task(task, acting_user=user, reason=f"report {report.pk} signed")
        elif task.state != "preliminary":
            do_mark_task_preliminary(task, acting_user=user, reason=f"report {report.pk} preliminary")
    except TaskRefused:
        pass  # the task moved on (released, reassigned): the report stands on its own
    if report.reading_task_id != task.pk:
        Report.objects.filter(pk=report.pk).update(reading_task=task)


def _complete_reading(report: Report, user: Any, *, amended: bool) -> None:
    """A final signature finishes the read: the task, the exam's orders and the study's state."""
    from worklist.actions import do_complete_order
    from worklist.models import Order

    if not amended:
        _task_step(report, user, "final")
        for order in Order.objects.filter(study_id=report.study_id):
            do_complete_order(order, actor=user, reason="report signed")
    do_mark_study_reported(report.study, amended=amended, actor=user, reason=f"report {report.pk} signed")


def _queue_exports(version: ReportVersion) -> None:
    from . import tasks

    targets = [ReportExport.Target.DICOM]
    if settings.REPORTS_HL7_OUTBOUND:
        targets.append(ReportExport.Target.HL7)
    ReportExport.objects.bulk_create([ReportExport(version=version, target=t) for t in targets])
    if settings.REPORTS_EXPORT_ON_SIGN:
        tasks.export_report_version.delay_on_commit(str(version.pk))


# Exports ---------------------------------------------------------------------------

EXPORTER = "report export"


def do_run_export(export: ReportExport, *, pdf: bytes | None = None) -> bool:
    """Attempt one export of a signed version now; True when done (now or before). Safe to run twice.

    The row stays locked while the archive or the HL7 interface is called, so
    two workers never send one export twice. A failure is recorded and retried
    with a growing delay up to ``REPORTS_EXPORT_MAX_ATTEMPTS``; every attempt's
    outcome is audited with the row's change.
    """
    with transaction.atomic():
        row = ReportExport.objects.select_for_update(skip_locked=True).filter(pk=export.pk).first()
        if row is None or row.state != ReportExport.State.PENDING:
            return row is not None and row.state == ReportExport.State.DONE
        version = ReportVersion.objects.select_related(
            "report__study__patient", "report__institution", "signing_key", "signer"
        ).get(pk=row.version_id)
        row.attempts += 1
        try:
            if row.target == ReportExport.Target.DICOM:
                row.result = exports.store_in_archive(version, pdf)
            else:
                host, port = exports.outbound_address()
                control = uuid.uuid4().hex[:20]
                row.payload = exports.oru_message(version, control_id=control)
                exports.send_mllp(row.payload, host=host, port=port, timeout=settings.REPORTS_HL7_TIMEOUT_SECONDS)
                row.result = control
        except Exception as exc:  # any failure is recorded and retried by the sweep
            log.warning("report export %s (%s) failed: %s", row.pk, row.target, exc)
            row.last_error = str(exc)[:2000]
            if row.attempts >= settings.REPORTS_EXPORT_MAX_ATTEMPTS:
                row.state = ReportExport.State.FAILED
            row.next_attempt_at = timezone.now() + timedelta(seconds=min(3600, 15 * 2**row.attempts))
            row.save(update_fields=["attempts", "last_error", "state", "next_attempt_at", "payload"])
            _audit_export(row, version, "give_up" if row.state == ReportExport.State.FAILED else "retry")
            return False
        row.state = ReportExport.State.DONE
        row.done_at = timezone.now()
        row.last_error = ""
        row.save(update_fields=["attempts", "result", "state", "done_at", "last_error", "payload"])
        _audit_export(row, version, "done")
    return True


def _audit_export(row: ReportExport, version: ReportVersion, method: str) -> None:
    # The export's history is its audit trail: its integer key has no place in
    # the transition table, whose rows name objects by UUID.
    audit.record(
        f"report_export.{method}",
        actor_label=EXPORTER,
        institution=version.report.institution_id,
        object_type="report_export",
        object_id=row.pk,
        patient_id=version.report.patient_id,
        outcome="success" if method == "done" else "failure",
        detail={
            "source": ReportExport.State.PENDING,
            "target": row.state,
            "export": row.target,
            "version": str(version.pk),
            "attempts": row.attempts,
            "error": row.last_error[:200],
        },
    )


# Critical results ----------------------------------------------------------------------


def _open_critical_result(report: Report, version: ReportVersion, user: Any, note: str, recipient: User | None) -> None:
    now = timezone.now()
    row = CriticalResult.objects.create(
        report=report,
        version=version,
        institution_id=report.institution_id,
        recipient=recipient,
        note=note[:2000],
        flagged_by=user,
        created_at=now,
        due_at=now + timedelta(minutes=settings.REPORTS_CRITICAL_ACK_MINUTES),
    )
    audit.record(
        "report.critical.flag",
        actor=user,
        institution=report.institution_id,
        object_type="critical_result",
        object_id=row.pk,
        patient_id=report.patient_id,
        detail={"report": str(report.pk), "recipient": recipient.get_username() if recipient else None},
    )
    notify_critical(row, "flagged")
    from . import tasks

    tasks.mail_critical_result.delay_on_commit(str(row.pk), "flagged")


def critical_recipients(row: CriticalResult, event: str) -> list[User]:
    if event == "escalated":
        roles = [Role.REFERRAL_COORDINATOR]
    elif row.recipient_id is not None:
        return [row.recipient] if row.recipient else []
    else:
        roles = [Role.CLINICIAN]
    ids = Membership.objects.filter(institution_id=row.institution_id, role__in=roles, is_active=True).values("user_id")
    return list(User.objects.filter(pk__in=ids, is_active=True))


def notify_critical(row: CriticalResult, event: str) -> None:
    """Live push to whoever must act on the critical result (after commit)."""
    data = {
        "event": event,
        "id": str(row.pk),
        "report": str(row.report_id),
        "url": f"/reports/{row.report_id}/",
        "note": row.note[:200],
    }
    if event == "escalated":
        groups = [push.institution_group(row.institution_id, Role.REFERRAL_COORDINATOR)]
    elif row.recipient_id is not None:
        groups = [push.user_group(row.recipient_id)]
    else:
        groups = [push.institution_group(row.institution_id, Role.CLINICIAN)]
    push.notify_many(groups, CRITICAL_TOPIC, data)


def do_acknowledge_critical_result(row: CriticalResult, *, acting_user: Any, request: Any = None) -> CriticalResult:
    """The clinician (or, once escalated, a coordinator) confirms they received the critical result."""
    with transaction.atomic():
        locked = CriticalResult.objects.select_for_update().get(pk=row.pk)
        if locked.acknowledged_at is None:
            locked.acknowledged_at = timezone.now()
            locked.acknowledged_by = acting_user
            locked.save(update_fields=["acknowledged_at", "acknowledged_by"])
            audit.record(
                "report.critical.acknowledge",
                request=request,
                actor=acting_user,
                institution=locked.institution_id,
                object_type="critical_result",
                object_id=locked.pk,
                patient_id=row.report.patient_id,
                detail={"report": str(locked.report_id)},
            )
            notify_critical(locked, "acknowledged")
    return locked


def do_escalate_critical_results(*, now: Any = None) -> int:
    """Escalate every critical result unacknowledged past its due time to the hospital's coordinators.

    Compare-and-swap per row, so two sweeps at once escalate each result once.
    """
    now = now or timezone.now()
    due = list(
        CriticalResult.objects.filter(
            acknowledged_at__isnull=True, escalated_at__isnull=True, due_at__lte=now
        ).values_list("pk", flat=True)[:500]
    )
    from . import tasks

    count = 0
    for pk in due:
        with transaction.atomic():
            won = CriticalResult.objects.filter(pk=pk, acknowledged_at__isnull=True, escalated_at__isnull=True).update(
                escalated_at=now
            )
            if not won:
                continue
            row = CriticalResult.objects.select_related("report").get(pk=pk)
            audit.record(
                "report.critical.escalate",
                actor_label="reports",
                institution=row.institution_id,
                object_type="critical_result",
                object_id=row.pk,
                patient_id=row.report.patient_id,
                detail={"report": str(row.report_id), "due_at": row.due_at.isoformat()},
            )
            notify_critical(row, "escalated")
            tasks.mail_critical_result.delay_on_commit(str(row.pk), "escalated")
            count += 1
    return count


def do_record_view(request: Any, report: Report, what: str = "view") -> None:
    audit.record(
        f"report.{what}",
        request=request,
        institution=report.institution_id,
        object_type="report",
        object_id=report.pk,
        patient_id=report.patient_id,
        detail={
            "study": str(report.study_id),
            "state": report.state,
            # The report of a study seen only as a prior of one being read.
            **({"as_prior": True} if seen_as_prior(getattr(request, "user", None), report.study) else {}),
        },
    )
