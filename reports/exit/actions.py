"""Every write of the exit: request, run, cancel and restart an export; offboard an institution.

Each runs in ``transaction.atomic``, re-reads the job with
``select_for_update()``, applies the transition (with its history row and
audit event) and schedules the export task on commit.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.fsm import apply_transition, record_transition
from pacs_cloud.metering.models import UsageCounter
from pacs_cloud.models import Institution

from . import export, offboard
from .models import ExitJob

log = logging.getLogger(__name__)


class ExitRefused(Exception):
    def __init__(self, message: str, code: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _schedule(job: ExitJob) -> None:
    from .tasks import run_exit_export

    run_exit_export.delay_on_commit(str(job.pk), job.attempt)


def do_request_export(
    institution: Institution,
    *,
    acting_user: Any,
    destination: str = ExitJob.Destination.DOWNLOAD,
    bucket: str = "",
    prefix: str = "",
    endpoint_url: str = "",
    request: HttpRequest | None = None,
) -> ExitJob:
    """Queue a complete export of ``institution`` (its administrator's request)."""
    if destination == ExitJob.Destination.S3 and not bucket:
        raise ExitRefused("An export to S3 needs a bucket.", "bucket_required", 400)
    with transaction.atomic():
        job = ExitJob.objects.create(
            institution_id=institution.pk,
            institution_name=institution.name,
            institution_slug=institution.slug,
            requested_by=getattr(acting_user, "username", ""),
            destination=destination,
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
        )
        record_transition(
            job,
            "",
            job.state,
            "request",
            actor=acting_user,
            institution=institution,
            audit_detail={"destination": destination, "bucket": bucket, "prefix": prefix},
        )
        _schedule(job)
    return job


def _locked(job: ExitJob) -> ExitJob:
    return ExitJob.objects.select_for_update().get(pk=job.pk)


def _institution(job: ExitJob) -> Institution | None:
    return Institution.objects.filter(pk=job.institution_id).first()


def do_cancel_export(job: ExitJob, *, acting_user: Any, request: HttpRequest | None = None) -> ExitJob:
    """Stop a queued or running export; a running task notices within a second and removes its partial file."""
    with transaction.atomic():
        job = _locked(job)
        if job.state not in (ExitJob.State.QUEUED, ExitJob.State.RUNNING):
            raise ExitRefused(f"A {job.state} export cannot be cancelled.", "not_cancellable")
        apply_transition(
            job,
            "cancel",
            actor=acting_user,
            institution=_institution(job),
            update_fields=["finished_at"],
            now=timezone.now(),
        )
    return job


def do_restart_export(job: ExitJob, *, acting_user: Any, request: HttpRequest | None = None) -> ExitJob:
    """Run a failed, cancelled or finished export again from the start, as a new attempt."""
    with transaction.atomic():
        job = _locked(job)
        if job.state not in (ExitJob.State.FAILED, ExitJob.State.CANCELLED, ExitJob.State.DONE):
            raise ExitRefused(f"A {job.state} export cannot be restarted.", "not_restartable")
        apply_transition(
            job,
            "restart",
            actor=acting_user,
            institution=_institution(job),
            update_fields=["attempt", "finished_at", "archive_size", "archive_sha256", "manifest_sha256"],
        )
        _schedule(job)
    return job


def _report_progress(job_id: Any, attempt: int) -> Any:
    def report(files: int, size: int) -> bool:
        # Compare-and-swap: no row updated means cancelled or restarted meanwhile.
        return bool(
            ExitJob.objects.filter(pk=job_id, attempt=attempt, state=ExitJob.State.RUNNING).update(
                files_done=files, bytes_done=size
            )
        )

    return report


def do_run_export(job_id: Any, attempt: int) -> str:
    """The export task's work: start, write everything, finish (or fail); safe to run twice.

    Returns the job's state afterwards; does nothing unless the job is queued
    under ``attempt``.
    """
    with transaction.atomic():
        job = ExitJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.attempt != attempt or job.state != ExitJob.State.QUEUED:
            return job.state if job is not None else "missing"
        files, size = export.totals(job.institution_id)
        job.files_total, job.bytes_total = files, size
        apply_transition(
            job,
            "start",
            actor_label="exit export",
            institution=_institution(job),
            update_fields=[
                "started_at",
                "finished_at",
                "error",
                "files_done",
                "bytes_done",
                "files_total",
                "bytes_total",
            ],
            now=timezone.now(),
        )
    progress = export.Progress(_report_progress(job.pk, attempt))
    sink: export.Sink | None = None
    try:
        sink = export.sink_for(job)
        written = export.write_export(job, sink, progress)
        sink.close()
    except export.Cancelled:
        if sink is not None:
            sink.abort()
        return ExitJob.objects.get(pk=job.pk).state
    except Exception as exc:
        log.exception("export %s failed", job.pk)
        if sink is not None:
            sink.abort()
        return _end(job.pk, attempt, "fail", error=f"{type(exc).__name__}: {exc}")
    archive_size, archive_sha = None, ""
    if isinstance(sink, export.TarSink):
        archive_size, archive_sha = sink.path.stat().st_size, sink.sha256
    return _end(
        job.pk,
        attempt,
        "finish",
        files=len(written.files) + 1,
        archive_size=archive_size,
        archive_sha256=archive_sha,
        manifest_sha256=written.manifest_sha256,
        bytes_done=progress.bytes,
    )


def _end(job_id: Any, attempt: int, method: str, *, error: str = "", files: int = 0, **fields: Any) -> str:
    with transaction.atomic():
        job = ExitJob.objects.select_for_update().get(pk=job_id)
        if job.attempt != attempt or job.state != ExitJob.State.RUNNING:
            return job.state
        for name, value in fields.items():
            setattr(job, name, value)
        if files:
            job.files_done = files
        kwargs: dict[str, Any] = {"now": timezone.now()}
        if method == "fail":
            kwargs["error"] = error
        apply_transition(
            job,
            method,
            actor_label="exit export",
            institution=_institution(job),
            update_fields=["finished_at", "error", "files_done", *fields],
            audit_detail={"files": job.files_done, "bytes": job.bytes_done, "manifest_sha256": job.manifest_sha256},
            **kwargs,
        )
    return job.state


def do_offboard_institution(
    job: ExitJob, *, acting_user: Any, confirm: str, request: HttpRequest | None = None
) -> ExitJob:
    """Remove the institution of a finished export everywhere, and sign the certificate of deletion.

    Precondition: a platform administrator (the caller checks), ``confirm``
    equal to the institution's slug. The storage purge runs first and is
    idempotent; the rows then go in one transaction, so a failure there
    leaves the job ``done`` and offboarding can simply be repeated.
    """
    if not getattr(acting_user, "is_platform_admin", False):
        raise ExitRefused("Only a platform administrator offboards an institution.", "forbidden", 403)
    if job.state != ExitJob.State.DONE:
        raise ExitRefused("Offboarding needs a finished export of the institution.", "export_not_done")
    if confirm != job.institution_slug:
        raise ExitRefused("Type the institution's short name to confirm.", "confirmation_mismatch", 400)
    institution = Institution.objects.filter(pk=job.institution_id).first()
    if institution is None:
        raise ExitRefused("The institution is already offboarded.", "already_offboarded")
    started = timezone.now()
    counted = offboard.inventory(institution)
    edges = offboard.edge_copies(institution)
    audit.record(
        "exit.offboard.start",
        request=request,
        actor=acting_user,
        institution=institution,
        object_type="exit_job",
        object_id=job.pk,
    )
    objects = offboard.purge_storage(institution)
    exports_removed = offboard.remove_export_files(institution.pk)
    rows, people = offboard.purge_database(institution)
    with transaction.atomic():
        job = _locked(job)
        if job.state != ExitJob.State.DONE:  # offboarded by a concurrent request meanwhile
            raise ExitRefused("The institution is already offboarded.", "already_offboarded")
        certificate = {
            "format": offboard.CERTIFICATE_FORMAT,
            "institution": {"id": str(institution.pk), "slug": institution.slug, "name": institution.name},
            "export": {
                "id": str(job.pk),
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
                "manifest_sha256": job.manifest_sha256,
                "archive_sha256": job.archive_sha256,
            },
            "deleted": counted,
            "objects_removed": objects,
            "export_archives_removed": exports_removed,
            "rows_removed": dict(sorted(rows.items())),
            "people": people,
            "kept": {
                "audit_events": _audit_count(institution.pk),
                "usage_counters": UsageCounter.objects.filter(institution_id=institution.pk).count(),
                "why": "the audit trail, and the usage billed (counts per day, nothing of a patient), "
                "are kept as the law requires",
            },
            "edge_copies": edges,
            "started_at": started.isoformat(),
            "finished_at": timezone.now().isoformat(),
            "by": acting_user.get_username(),
        }
        body, signature, key = offboard.sign_certificate(certificate, acting_user)
        job.certificate, job.certificate_signature = body, signature
        job.certificate_key, job.certificate_public_key = key.fingerprint, bytes(key.public_key)
        apply_transition(
            job,
            "offboard",
            actor=acting_user,
            update_fields=[
                "offboarded_at",
                "offboarded_by",
                "certificate",
                "certificate_signature",
                "certificate_key",
                "certificate_public_key",
            ],
            audit_detail={"deleted": counted, "objects_removed": objects},
            now=timezone.now(),
            by=acting_user.get_username(),
        )
    return job


def _audit_count(institution_id: Any) -> int:
    from pacs_cloud.models import AuditEvent

    return AuditEvent.objects.filter(institution_id=institution_id).count()
