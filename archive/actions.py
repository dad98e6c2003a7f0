"""Multi-step changes to the archive (the only place archive state changes).

Corrections of patient data never rewrite stored objects: the stored object
stays as the modality sent it (its SHA-256 keeps proving that), the index is
corrected, and every retrieval (WADO-RS, C-GET, C-MOVE, metadata) applies the
study's ``header_overrides`` to the Patient module on the way out. Images
arriving later with the old values are still recognised, because the values
as first received are kept (``Study.received_patient``,
``Patient.received_forms``).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydicom
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import ForeignObjectRel, QuerySet
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from pacs_cloud import audit
from pacs_cloud.fsm import apply_transition, record_transition
from pacs_cloud.lib import dicom_datetime
from pacs_cloud.models import AuditEvent, Institution

from . import names, signals
from .access import VIEW_PRIOR, VIEW_STUDY
from .copies.locations import default_location_id, reader
from .ingest import birth_date_in_future, patient_issuer
from .models import (
    DicomNode,
    IngestConflict,
    Instance,
    ObjectCopy,
    Patient,
    Series,
    Study,
    StudyGroupObjectPermission,
    StudyUserObjectPermission,
)
from .storage import CACHE, get_storage


def do_complete_study(study: Study, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """Mark a receiving study complete and announce it; False if it was not receiving.

    Called by the stability sweep and by MPPS completion; safe to call twice.
    """
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        try:
            apply_transition(
                locked,
                "complete",
                actor=actor,
                actor_label=actor_label,
                institution=locked.institution_id,
                reason=reason,
                update_fields=["completed_at"],
            )
        except TransitionNotAllowed:
            return False
        transaction.on_commit(lambda: signals.study_completed.send(Study, study=locked))
    return True


def do_mark_study_routed(study: Study, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """Mark a complete study as handed to the reading workflow; False if it was not complete.

    Called by the workflow engine inside the transaction that starts the
    study's reading process; safe to call twice.
    """
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        try:
            apply_transition(
                locked, "route", actor=actor, actor_label=actor_label, institution=locked.institution_id, reason=reason
            )
        except TransitionNotAllowed:
            return False
    return True


def do_mark_study_reported(
    study: Study, *, amended: bool = False, actor: Any = None, actor_label: str = "", reason: str = ""
) -> bool:
    """A signed final report (``amended``: an addendum or amendment) moves the study to reported/amended.

    Called by the reports app inside the signing transaction; False, changing
    nothing, when the study is not in a state that can take the step.
    """
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        try:
            apply_transition(
                locked,
                "amend" if amended else "report",
                actor=actor,
                actor_label=actor_label,
                institution=locked.institution_id,
                reason=reason,
            )
        except TransitionNotAllowed:
            return False
    return True


def do_reopen_study(study_pk: Any, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """A complete or routed study that receives a late instance goes back to receiving.

    It becomes complete again after another stability window, and
    ``study_completed`` is sent again then: the reading workflow continues
    the study's process and tells its readers the study grew. A reported
    study stays where it is (the late instance is announced by ``instance_stored``).
    """
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study_pk)
        if locked.state not in (Study.State.COMPLETE, Study.State.ROUTED):
            return False
        apply_transition(
            locked,
            "reopen",
            actor=actor,
            actor_label=actor_label,
            institution=locked.institution_id,
            reason=reason,
            update_fields=["completed_at"],
        )
    return True


def do_complete_stable_studies(*, now: dt.datetime | None = None) -> int:
    """Complete every receiving study whose last instance is older than its institution's window.

    The periodic sweep (``archive.tasks.complete_stable_studies``); returns
    how many studies it completed. Safe to run twice and in parallel: each
    completion re-checks the state under a row lock.
    """
    from django.conf import settings

    from .models import ArchivePolicy

    now = now or timezone.now()
    windows = dict(
        ArchivePolicy.objects.filter(stability_seconds__isnull=False).values_list("institution_id", "stability_seconds")
    )
    shortest = min([settings.STUDY_STABILITY_SECONDS, *windows.values()])
    candidates = Study.objects.filter(
        state=Study.State.RECEIVING, last_instance_at__lte=now - dt.timedelta(seconds=shortest)
    ).values_list("pk", "institution_id", "last_instance_at")
    done = 0
    for pk, institution_id, last in candidates.iterator():
        window = windows.get(institution_id, settings.STUDY_STABILITY_SECONDS)
        if last > now - dt.timedelta(seconds=window):
            continue
        study = Study(pk=pk)
        if do_complete_study(study, actor_label="stability sweep", reason=f"no new instance for {window} s"):
            done += 1
    return done


# Patients -----------------------------------------------------------------------


def do_create_patient(
    institution: Institution,
    *,
    patient_id: str,
    name: str,
    issuer: str | None = None,
    birth_date: dt.date | None = None,
    sex: str = "",
    actor: Any = None,
    actor_label: str = "",
    request: Any = None,
    event: str = "archive.patient.create",
) -> Patient:
    """Create the institution's record of a patient (registration before any image arrives).

    ``name`` is a DICOM PN string; its matching forms are derived here.
    ``issuer`` defaults to the institution's issuer of Patient IDs; ``event``
    names the audit event (the caller's word for what the user did). Raises
    ``IntegrityError`` when the ID is taken; the caller decides what that
    means to its user.
    """
    forms = names.name_forms(name)
    with transaction.atomic():
        patient = Patient.objects.create(
            institution=institution,
            patient_id=patient_id[:64],
            issuer=institution.patient_id_issuer if issuer is None else issuer,
            name=forms.full[:324],
            name_search=forms.alphabetic[:324],
            name_ideographic=forms.ideographic[:324],
            name_phonetic=forms.phonetic[:324],
            name_words=forms.words[:400],
            birth_date=birth_date,
            sex=sex,
        )
        audit.record(
            event,
            request=request,
            actor=actor,
            actor_label=actor_label,
            institution=institution,
            object_type="archive.patient",
            object_id=patient.pk,
            patient_id=patient.patient_id,
        )
    return patient


# Patient corrections (used by the worklist's reconciliation queue) -----------------

PATIENT_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")


def _patient_overrides(patient: Patient) -> dict[str, str]:
    return {
        "PatientName": patient.name,
        "PatientID": patient.patient_id,
        "IssuerOfPatientID": "" if patient.issuer.startswith("no-patient-id:") else patient.issuer,
        "PatientBirthDate": dicom_datetime.format_da(patient.birth_date),
        "PatientSex": patient.sex,
    }


def _refresh_overrides(patient: Patient) -> None:
    """Recompute ``header_overrides`` of every study of ``patient`` from the index."""
    wanted = _patient_overrides(patient)
    institution = Institution.objects.get(pk=patient.institution_id)
    for study in Study.objects.select_for_update().filter(patient=patient):
        received = dict(study.received_patient or {})
        if received.get("PatientID"):
            # A blank issuer was read as the institution's own: no override to say so.
            received["IssuerOfPatientID"] = patient_issuer(institution, {"IssuerOfPatientID": "", **received})
        overrides = {k: v for k, v in wanted.items() if (received.get(k, "") or "") != v}
        if overrides != study.header_overrides:
            study.header_overrides = overrides
            study.save(update_fields=["header_overrides"])


def do_correct_patient_demographics(
    patient: Patient,
    *,
    acting_user: Any = None,
    actor_label: str = "",
    reason: str = "",
    name: str | None = None,
    birth_date: dt.date | None = None,
    sex: str | None = None,
    patient_id: str | None = None,
    issuer: str | None = None,
) -> Patient:
    """Correct a patient's name, birth date, sex or identifier in the index.

    Stored objects are not rewritten; retrievals carry the corrected values
    (see the module docstring). The values as received are remembered so
    later images with the old values still find this patient. Raises
    ``ValueError`` if the new identifier is taken at the institution (link
    the studies with :func:`do_link_study_to_patient` instead). Audited.
    """
    with transaction.atomic():
        locked = Patient.objects.select_for_update().get(pk=patient.pk)
        before = _patient_overrides(locked)
        if patient_id is not None or issuer is not None:
            new_id = (patient_id if patient_id is not None else locked.patient_id).strip()[:64]
            new_issuer = (issuer if issuer is not None else locked.issuer).strip()[:64]
            clash = Patient.objects.filter(
                institution_id=locked.institution_id, patient_id=new_id, issuer=new_issuer
            ).exclude(pk=locked.pk)
            if clash.exists():
                raise ValueError(f"patient {new_id} already exists here; link the studies to that patient instead")
            locked.patient_id, locked.issuer = new_id, new_issuer
        if name is not None:
            forms = names.name_forms(name)
            locked.name = forms.full[:324]
            locked.name_search = forms.alphabetic[:324]
            locked.name_ideographic = forms.ideographic[:324]
            locked.name_phonetic = forms.phonetic[:324]
            locked.name_words = forms.words[:400]
        if birth_date is not None:
            if birth_date_in_future(locked.institution, birth_date):
                raise ValueError(f"the birth date {birth_date.isoformat()} is in the future")
            locked.birth_date = birth_date
        if sex is not None:
            locked.sex = sex.strip().upper()[:16]
        after = _patient_overrides(locked)
        if before not in locked.received_forms:
            locked.received_forms = [*locked.received_forms, before]
        locked.updated_at = timezone.now()
        locked.save()
        _refresh_overrides(locked)
        changed = {k: {"from": before[k], "to": after[k]} for k in PATIENT_KEYWORDS if before[k] != after[k]}
        audit.record(
            "archive.patient.correct",
            actor=acting_user,
            actor_label=actor_label,
            institution=locked.institution_id,
            object_type="archive.patient",
            object_id=locked.pk,
            patient_id=locked.patient_id,
            detail={"changed": changed, "reason": reason},
        )
    return locked


def do_link_study_to_patient(
    study: Study, patient: Patient, *, acting_user: Any = None, actor_label: str = "", reason: str = ""
) -> Study:
    """Move a study (e.g. sent with a wrong or temporary ID) to another patient of its institution.

    Retrievals of the study carry the target patient's demographics from
    then on; later instances of the study with the demographics it was first
    sent with are still accepted. Audited.
    """
    if patient.institution_id != study.institution_id:
        raise ValueError("a study can only be linked to a patient of its own institution")
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        previous = locked.patient_id
        locked.patient = patient
        locked.save(update_fields=["patient"])
        _refresh_overrides(patient)
        audit.record(
            "archive.study.relink",
            actor=acting_user,
            actor_label=actor_label,
            institution=locked.institution_id,
            object_type="archive.study",
            object_id=locked.pk,
            patient_id=patient.patient_id,
            detail={"from_patient": str(previous), "to_patient": str(patient.pk), "reason": reason},
        )
    return locked


def do_merge_duplicate_patients(institution: Institution | None = None) -> int:
    """Join each patient recorded twice at an institution into one record; the number merged.

    Images whose Patient ID came without an issuer used to get a record of
    their own beside the one registration made (issuer blank against the
    institution's issuer). The registered record is kept; every study,
    order, referral and import of the other moves to it, its demographics
    are kept as received forms (later images carrying them still match),
    and it is deleted. Safe to run again: nothing is left to merge.
    """
    institutions = [institution] if institution is not None else Institution.objects.all()
    merged = 0
    for inst in institutions:
        if not inst.patient_id_issuer:
            continue
        blank = Patient.objects.filter(institution=inst, issuer="").exclude(patient_id="")
        registered = Patient.objects.filter(
            institution=inst, issuer=inst.patient_id_issuer, patient_id__in=blank.values("patient_id")
        )
        for kept in registered:
            for duplicate in blank.filter(patient_id=kept.patient_id):
                _merge_patient(duplicate, into=kept)
                merged += 1
    return merged


def _merge_patient(duplicate: Patient, *, into: Patient) -> None:
    with transaction.atomic():
        kept = Patient.objects.select_for_update().get(pk=into.pk)
        gone = Patient.objects.select_for_update().get(pk=duplicate.pk)
        moved = {}
        # Every relation, the other apps' included, found through the model so
        # the archive names none of them.
        for relation in Patient._meta.get_fields(include_hidden=True):
            if isinstance(relation, ForeignObjectRel) and relation.one_to_many:
                model = relation.related_model
                field = relation.field.name
                count = model._default_manager.filter(**{field: gone}).update(**{field: kept})
                if count:
                    moved[model._meta.label_lower] = count
        forms = [_patient_overrides(gone), *gone.received_forms]
        kept.received_forms = [*kept.received_forms, *(f for f in forms if f not in kept.received_forms)]
        kept.updated_at = timezone.now()
        kept.save(update_fields=["received_forms", "updated_at"])
        gone_pk = gone.pk
        gone.delete()
        _refresh_overrides(kept)
        audit.record(
            "archive.patient.merge",
            actor_label="duplicate patient merge",
            institution=kept.institution_id,
            object_type="archive.patient",
            object_id=kept.pk,
            patient_id=kept.patient_id,
            detail={"merged_patient": str(gone_pk), "moved": moved},
        )


# Conflicts ----------------------------------------------------------------------


def do_resolve_conflict(conflict: IngestConflict, *, keep: str, acting_user: Any = None) -> IngestConflict:
    """Close a conflict: ``keep="existing"`` discards the kept-aside object;
    ``keep="new"`` makes it the archived object (the old one is kept aside in
    its place, so nothing is lost). Audited.
    """
    if keep not in ("existing", "new"):
        raise ValueError("keep must be 'existing' or 'new'")
    storage = get_storage()
    with transaction.atomic():
        locked = IngestConflict.objects.select_for_update().get(pk=conflict.pk)
        if locked.status != IngestConflict.Status.OPEN:
            return locked
        if keep == "existing":
            locked.status = IngestConflict.Status.KEPT_EXISTING
            transaction.on_commit(lambda: storage.delete(locked.storage_key))
        else:
            if locked.reason:
                raise ValueError(f"kept aside because {locked.reason}: correct it at the source and send it again")
            if locked.instance_id is None:
                raise ValueError("the archived instance of this conflict is gone; keep the existing state")
            instance = Instance.objects.select_for_update().get(pk=locked.instance_id)
            old_key, old_sha, old_size = instance.storage_key, instance.sha256, instance.size
            instance.storage_key, instance.sha256, instance.size = locked.storage_key, locked.sha256, locked.size
            instance.transfer_syntax_uid = locked.transfer_syntax_uid
            instance.pixel_data_offset = instance.pixel_data_length = None
            instance.location = "stored"
            _refresh_instance_metadata(instance)
            instance.save()
            # The replaced object's copies go with it; the new one starts with its copy in the default location.
            instance.copies.all().delete()
            ObjectCopy.objects.create(
                instance=instance,
                location_id=default_location_id(),
                key=instance.storage_key,
                size=instance.size,
                sha256=instance.sha256,
            )
            Series.objects.filter(pk=instance.series_id).update(size_bytes=_series_size(instance.series_id))
            locked.storage_key, locked.sha256, locked.size = old_key, old_sha, old_size
            locked.status = IngestConflict.Status.REPLACED
        locked.resolved_at = timezone.now()
        locked.save()
        record_transition(
            locked,
            IngestConflict.Status.OPEN,
            locked.status,
            "resolve",
            actor=acting_user,
            institution=locked.institution_id,
            reason=f"kept the {keep} object",
            audit_detail={"keep": keep, "sop_instance_uid": locked.sop_instance_uid},
        )
    return locked


def _series_size(series_id: Any) -> int:
    from django.db.models import Sum

    return Instance.objects.filter(series_id=series_id).aggregate(total=Sum("size"))["total"] or 0


def _refresh_instance_metadata(instance: Instance) -> None:
    from .ingest import _check_complete, json_metadata

    with reader().open(instance.storage_key) as handle:
        data = handle.read()
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024, force=True)
    instance.metadata = json_metadata(ds)
    offset, length = _check_complete(ds, len(data), 0)
    instance.pixel_data_offset, instance.pixel_data_length = offset, length
    instance.rows, instance.columns = ds.get("Rows"), ds.get("Columns")
    instance.number_of_frames = int(ds.get("NumberOfFrames") or 1)


# Object store copies ------------------------------------------------------------


def do_copy_to_object_store(instance_pk: Any) -> bool:
    """Copy one cached instance to the object store and record it there.

    Safe to run twice and concurrently: the copy is idempotent (same key,
    same bytes, verified) and the location flips by compare-and-swap.
    """
    row = Instance.objects.filter(pk=instance_pk, location=CACHE).values("storage_key", "sha256").first()
    if row is None:
        return False
    storage = get_storage()
    storage.copy_to_store(row["storage_key"], row["sha256"])  # type: ignore[attr-defined]
    return bool(Instance.objects.filter(pk=instance_pk, location=CACHE).update(location="stored"))


# DICOM nodes --------------------------------------------------------------------


def do_save_dicom_node(
    *,
    institution: Institution,
    acting_user: Any,
    node: DicomNode | None = None,
    ae_title: str,
    host: str = "",
    port: int | None = None,
    description: str = "",
    is_active: bool = True,
) -> DicomNode:
    """Create or change a DICOM node of ``institution`` (an institution admin's action). Audited."""
    created = node is None or node._state.adding
    with transaction.atomic():
        if node is None:
            node = DicomNode(institution=institution)
        elif node.institution_id != institution.pk:
            raise ValueError("the node belongs to another institution")
        node.ae_title = ae_title.strip()
        node.host = host.strip()
        node.port = port
        node.description = description.strip()
        node.is_active = is_active
        node.full_clean()
        node.save()
        audit.record(
            "archive.dicomnode.create" if created else "archive.dicomnode.change",
            actor=acting_user,
            institution=institution,
            object_type="archive.dicomnode",
            object_id=node.pk,
            detail={"ae_title": node.ae_title, "host": node.host, "port": node.port, "active": node.is_active},
        )
    return node


def do_delete_dicom_node(node: DicomNode, *, acting_user: Any) -> None:
    with transaction.atomic():
        audit.record(
            "archive.dicomnode.delete",
            actor=acting_user,
            institution=node.institution_id,
            object_type="archive.dicomnode",
            object_id=node.pk,
            detail={"ae_title": node.ae_title},
        )
        node.delete()


ECHO_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    message: str
    milliseconds: int | None = None


def do_echo_dicom_node(node: DicomNode, *, acting_user: Any, request: Any = None) -> EchoResult:
    """C-ECHO ``node`` from this server (Verification SOP Class, PS3.4 A.4), as the cloud AE. Audited.

    Tests the path from the cloud to the node's host and port: the node's AE
    title must be accepted there as called AE and ours as calling AE.
    """
    if not node.host or not node.port:
        result = EchoResult(False, "Set the node's host and port first: the echo is sent there.")
    else:
        result = _echo(node.host, node.port, node.ae_title)
    audit.record(
        "archive.dicomnode.echo",
        request=request,
        actor=acting_user,
        institution=node.institution_id,
        object_type="archive.dicomnode",
        object_id=node.pk,
        outcome=AuditEvent.Outcome.SUCCESS if result.ok else AuditEvent.Outcome.FAILURE,
        detail={"ae_title": node.ae_title, "host": node.host, "port": node.port, "message": result.message},
    )
    return result


def _echo(host: str, port: int, called: str) -> EchoResult:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = ECHO_TIMEOUT_SECONDS
    started = time.monotonic()
    assoc = ae.associate(host, port, ae_title=called)
    try:
        if assoc.is_rejected:
            return EchoResult(False, f"{called} at {host}:{port} rejected the association (our AE title or theirs).")
        if not assoc.is_established:
            return EchoResult(False, f"No DICOM answer from {host}:{port}.")
        status = assoc.send_c_echo()
        elapsed = round((time.monotonic() - started) * 1000)
        if status and getattr(status, "Status", None) == 0x0000:
            return EchoResult(True, f"{called} answered the echo in {elapsed} ms.", elapsed)
        return EchoResult(False, f"{called} accepted the association but not the echo.")
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


# Study grants --------------------------------------------------------------
#
# The only writers of django-guardian's ``archive.view_study`` rows, which
# ``archive.access`` reads. They run inside the caller's action (a reading-task
# claim or release, a share or its revocation), which holds the transaction
# and writes the audit event.


def _view_study_permission_id(codename: str = VIEW_STUDY) -> int:
    # Not cached across calls: a flushed test database renumbers permissions.
    return Permission.objects.only("pk").get(content_type__app_label="archive", codename=codename).pk


def grant_study_view(
    study: Study | Any, *, user: Any = None, groups: Iterable[Group] = (), as_prior: bool = False
) -> None:
    """Let ``user`` and the members of ``groups`` see ``study``; idempotent.

    ``study`` and ``user`` may be given as rows or primary keys. ``as_prior``
    grants it as a relevant prior of a study being read: visible, read-only,
    and a separate grant, so taking it back leaves any full grant in place.

    The rows are guardian's own (its direct-foreign-key models, unique per
    holder, permission and study), written in one statement each.
    """
    study_id: Any = getattr(study, "pk", study)
    permission = _view_study_permission_id(VIEW_PRIOR if as_prior else VIEW_STUDY)
    if user is not None:
        StudyUserObjectPermission.objects.bulk_create(
            [
                StudyUserObjectPermission(
                    user_id=getattr(user, "pk", user), permission_id=permission, content_object_id=study_id
                )
            ],
            ignore_conflicts=True,
        )
    group_rows = [
        StudyGroupObjectPermission(group=group, permission_id=permission, content_object_id=study_id)
        for group in groups
    ]
    if group_rows:
        StudyGroupObjectPermission.objects.bulk_create(group_rows, ignore_conflicts=True)


def revoke_study_view(
    study: Study | Any, *, user: Any = None, groups: Iterable[Group] = (), as_prior: bool = False
) -> int:
    """Take back what :func:`grant_study_view` gave ``user`` and ``groups``; the number of grants removed."""
    study_id: Any = getattr(study, "pk", study)
    codename = VIEW_PRIOR if as_prior else VIEW_STUDY
    removed = 0
    if user is not None:
        removed += StudyUserObjectPermission.objects.filter(
            content_object_id=study_id, user_id=getattr(user, "pk", user), permission__codename=codename
        ).delete()[0]
    group_list = groups if isinstance(groups, QuerySet) else list(groups)
    if group_list:
        removed += StudyGroupObjectPermission.objects.filter(
            content_object_id=study_id, group__in=group_list, permission__codename=codename
        ).delete()[0]
    return removed
