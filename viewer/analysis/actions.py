"""Changes DCE-MRI analysis makes: map jobs started, progressing, cancelled, finished, and their maps archived."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.ingest import Source, store_instance
from archive.models import Instance, Series, Study
from pacs_cloud import audit
from pacs_cloud.fsm import apply_transition

from ..actions import do_mark_key_image
from ..models import KeyImage
from ..render import load_dataset
from .models import DceMapJob, DceRegionAnalysis
from .parametric import complete_type_2
from .plot import curve_picture

State = DceMapJob.State


def _record(job: DceMapJob, action: str, *, actor: Any = None, actor_label: str = "", **detail: Any) -> None:
    audit.record(
        action,
        actor=actor,
        actor_label=actor_label,
        object_type="dce_map_job",
        object_id=job.pk,
        patient_id=job.study.patient.patient_id,
        institution=job.institution_id,
        detail={"study": str(job.study_id), "model": job.model, **detail},
    )


def do_start_dce_map_job(
    *,
    acting_user: Any,
    study: Study,
    series: list[Series],
    mask: dict,
    model: str,
    aif: dict,
    options: dict,
) -> DceMapJob:
    """Queue voxel-wise maps of ``series`` (one dynamic acquisition of ``study``) inside ``mask``.

    The caller has checked that ``acting_user`` may see the study. The task
    is queued once the job is committed.
    """
    from . import tasks

    with transaction.atomic():
        job = DceMapJob.objects.create(
            institution_id=study.institution_id,
            study=study,
            series=[str(s.pk) for s in series],
            mask=mask,
            model=model,
            aif=aif,
            options=options,
            created_by=acting_user,
        )
        _record(job, "analysis.dce.map.start", actor=acting_user, series=job.series)
        transaction.on_commit(lambda: tasks.compute_dce_maps.delay(str(job.pk)))
    return job


def do_cancel_dce_map_job(job: DceMapJob, *, acting_user: Any) -> DceMapJob:
    """Ask a running job to stop (it does at its next block of voxels); a queued one stops at once."""
    with transaction.atomic():
        locked = DceMapJob.objects.select_for_update().select_related("study__patient").get(pk=job.pk)
        if locked.state in DceMapJob.FINISHED:
            return locked
        if locked.state == State.QUEUED:
            _transition(locked, "cancel", actor=acting_user, update_fields=["cancel_requested", "finished_at"])
        else:
            # The worker holds the job: it sees the flag at its next progress report and ends it.
            locked.cancel_requested = True
            locked.save(update_fields=["cancel_requested"])
        _record(locked, "analysis.dce.map.cancel", actor=acting_user, state=locked.state)
    return locked


def _transition(job: DceMapJob, method: str, *, actor: Any = None, reason: str = "", **kwargs: Any) -> None:
    """Apply ``method`` to the locked ``job`` with its transition row and audit event."""
    fields = kwargs.pop("update_fields", [])
    apply_transition(
        job,
        method,
        actor=actor,
        actor_label="" if actor else "dce-maps",
        institution=job.institution_id,
        reason=reason[:200],
        update_fields=fields,
        audit_detail={"study": str(job.study_id), "model": job.model},
        **({"now": timezone.now()} if method != "begin" else {}),
        **kwargs,
    )


def do_begin_dce_map_job(job_pk: Any) -> DceMapJob | None:
    """Claim a queued job for this worker; None when it is not queued (a task delivered twice runs once)."""
    with transaction.atomic():
        job = DceMapJob.objects.select_for_update().select_related("study__patient").filter(pk=job_pk).first()
        if job is None or job.state != State.QUEUED or job.cancel_requested:
            return None
        _transition(job, "begin", update_fields=["progress"])
    return job


def do_report_dce_map_progress(job_pk: Any, progress: float) -> bool:
    """Record progress; False when the job was cancelled meanwhile (the worker then stops).

    Progress is not a state change: a plain conditional update, no lock held across the fit.
    """
    return bool(
        DceMapJob.objects.filter(pk=job_pk, state=State.RUNNING, cancel_requested=False).update(
            progress=round(progress, 4)
        )
    )


# How a worker ends a running job, by the state it reached.
ENDINGS = {State.DONE: "finish", State.FAILED: "fail", State.CANCELLED: "cancel"}


def do_end_dce_map_job(job_pk: Any, state: str, *, error: str = "", results: dict | None = None) -> None:
    """Close a running job as done, failed or cancelled, with its results or the reason."""
    with transaction.atomic():
        job = DceMapJob.objects.select_for_update().select_related("study__patient").get(pk=job_pk)
        if job.state != State.RUNNING:
            return
        method = ENDINGS[State(state)]
        kwargs: dict[str, Any] = {}
        if method == "finish":
            kwargs = {"results": results or {}, "update_fields": ["results", "progress", "finished_at"]}
        elif method == "fail":
            kwargs = {"error": error, "update_fields": ["error", "finished_at"]}
        else:
            kwargs = {"update_fields": ["cancel_requested", "finished_at"]}
        _transition(job, method, reason=error, **kwargs)


def do_archive_parametric_map(job: DceMapJob, path: Path) -> Any:
    """Store a Parametric Map of ``job`` in its study through the archive's ingest (archived like any image)."""
    result = store_instance(path, institution=job.study.institution, only_study=job.study.study_instance_uid)
    return result.instance


def do_record_dce_region(
    *, acting_user: Any, study: Study, series: list[Series], region: dict, label: str, results: dict
) -> DceRegionAnalysis:
    """Keep a region's analysis for the study (the report editor inserts its values); audited as a read of PHI."""
    with transaction.atomic():
        row = DceRegionAnalysis.objects.create(
            institution_id=study.institution_id,
            study=study,
            series=[str(s.pk) for s in series],
            region=region,
            label=label,
            results=results,
            created_by=acting_user,
        )
        audit.record(
            "analysis.dce.region",
            actor=acting_user,
            object_type="dce_region",
            object_id=row.pk,
            patient_id=study.patient.patient_id,
            institution=study.institution_id,
            detail={"study": str(study.pk), "curve_type": (results.get("enhancement") or {}).get("curve_type")},
        )
    return row


# Series number of the saved curves: beside the Parametric Maps (900s), after the scanner's own.
CURVE_SERIES_NUMBER = 950


def do_save_dce_curve_key_image(region: DceRegionAnalysis, *, acting_user: Any) -> KeyImage:
    """Store ``region``'s plotted curve (with the AIF) in its study as a Secondary Capture; mark it a key image.

    The picture goes through the archive's ingest like any image that
    arrives (archived, replicated, found by QIDO-RS) and is marked as the
    caller's key image of the study, so the report lists it. The caller has
    checked that ``acting_user`` may see the study.
    """
    import highdicom as hd  # seconds to import: only when a picture is written

    study = region.study
    first = Instance.objects.filter(series_id__in=region.series).order_by("instance_number", "pk").first()
    if first is None:
        raise ValueError("the region's series hold no image")
    source = load_dataset(first)
    complete_type_2(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=curve_picture(region.results, region.label),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "P"),  # emptied below: highdicom asks for one, a plot has none
        series_instance_uid=generate_uid(),
        series_number=CURVE_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Cloud PACS",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # The archive files the picture under the study's patient only when it names that patient the same way.
    for keyword in ("SpecificCharacterSet", "IssuerOfPatientID", "OtherPatientIDsSequence"):
        if keyword in source:
            setattr(sc, keyword, source[keyword].value)
    sc.PatientOrientation = []  # Type 2 (PS3.3 C.7.6.1): present, empty for a picture with no anatomy
    # Type 2C for a paired body part (breast): the source's side, else unknown (empty).
    sc.Laterality = source.get("Laterality", "")
    enhancement = region.results.get("enhancement") or {}
    description = f"DCE-MRI curve of {region.label or 'a region'}" + (
        f", type {enhancement['curve_type']}" if enhancement.get("curve_type") else ""
    )
    sc.SeriesDescription = "DCE-MRI curves"
    sc.DerivationDescription = description
    sc.ConversionType = "WSD"  # workstation: drawn on the server from the region's curves
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{sc.SOPInstanceUID}.dcm"
        sc.save_as(path, enforce_file_format=True)
        stored = store_instance(
            path,
            institution=study.institution,
            source=Source(via="viewer", label=acting_user.get_username(), actor=acting_user),
            only_study=study.study_instance_uid,
        )
    key_image = do_mark_key_image(acting_user=acting_user, instance=stored.instance, frame=1, note=description)
    audit.record(
        "analysis.dce.region.key_image",
        actor=acting_user,
        object_type="dce_region",
        object_id=region.pk,
        patient_id=study.patient.patient_id,
        institution=study.institution_id,
        detail={"sop_instance_uid": sc.SOPInstanceUID, "key_image": str(key_image.pk)},
    )
    return key_image
