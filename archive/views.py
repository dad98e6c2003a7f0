"""The archive's pages: import from media (CDs, folders, files) and the DICOM nodes of an institution."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pydicom
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from pacs_cloud import access, audit
from pacs_cloud.lib.person_names import display_name
from pacs_cloud.models import Institution, Role
from pacs_cloud.tenancy import current_institution

from . import actions
from .ingest import IngestError, IngestSession, Source, store_instance
from .models import DicomNode

IMPORT_ROLES = (Role.TECHNOLOGIST, Role.RADIOLOGIST)


def _institution_with_role(request: HttpRequest, roles: tuple[str, ...]) -> Institution:
    """The current institution, if the user holds one of ``roles`` there (else 404, as for any other page)."""
    institution = current_institution(request)
    if institution is None or not access.has_role(request.user, institution, *roles):
        raise Http404("This page needs another role at your current institution.")
    return institution


# Import from media --------------------------------------------------------------------


@login_required
def import_media(request: HttpRequest) -> HttpResponse:
    institution = _institution_with_role(request, IMPORT_ROLES)
    return render(request, "archive/import.html", {"institution": institution})


def _uploaded_path(upload: Any) -> tuple[Path, bool]:
    """A path holding the uploaded file, and whether it is ours to delete."""
    temporary = getattr(upload, "temporary_file_path", None)
    if temporary is not None:
        return Path(temporary()), False
    folder = Path(settings.DATA_DIR) / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="import-", suffix=".dcm", delete=False) as handle:
        for chunk in upload.chunks():
            handle.write(chunk)
    return Path(handle.name), True


@login_required
@require_POST
def import_file(request: HttpRequest) -> JsonResponse:
    """Store one file of a media import; answers what happened to it, in words."""
    institution = _institution_with_role(request, IMPORT_ROLES)
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"status": "refused", "reason": "no file was sent"}, status=400)
    batch = str(request.POST.get("batch", ""))[:64]
    session = IngestSession(
        Source("import", request.user.get_username(), actor=request.user, address=audit.client_address(request))
    )
    path, ours = _uploaded_path(upload)
    try:
        result = store_instance(path, institution=institution, session=_with_batch_audits(session, batch))
    except IngestError as exc:
        return JsonResponse({"status": "refused", "code": exc.code, "reason": exc.reason})
    finally:
        _remember_batch_audits(session, batch)
        if ours:
            path.unlink(missing_ok=True)
    instance = result.instance
    study = instance.series.study
    return JsonResponse(
        {
            "status": "stored" if result.created else "duplicate",
            "reason": "" if result.created else "already archived with identical content",
            "study_instance_uid": study.study_instance_uid,
            "study": str(study.pk),
            "patient_name": study.patient.name,
            "patient_display_name": display_name(study.patient.name),
            "patient_id": study.patient.patient_id,
            "study_description": study.description,
            "modality": instance.series.modality,
        }
    )


def _batch_key(batch: str) -> str:
    return f"archive:import-batch:{batch}"


def _with_batch_audits(session: IngestSession, batch: str) -> IngestSession:
    # One "received" audit event per study per import rather than per file.
    if batch:
        session.audited = set(cache.get(_batch_key(batch), []))
    return session


def _remember_batch_audits(session: IngestSession, batch: str) -> None:
    if batch:
        cache.set(_batch_key(batch), sorted(session.audited), timeout=6 * 3600)


@login_required
@require_POST
def read_dicomdir(request: HttpRequest) -> JsonResponse:
    """The files a DICOMDIR (PS3.10 §8, PS3.3 F.5) lists, as paths relative to its folder."""
    _institution_with_role(request, IMPORT_ROLES)
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "no DICOMDIR was sent"}, status=400)
    path, ours = _uploaded_path(upload)
    try:
        try:
            directory = pydicom.dcmread(path)
            records = directory.DirectoryRecordSequence
        except Exception as exc:  # any unreadable directory gets the same answer
            return JsonResponse({"error": f"this DICOMDIR cannot be read: {exc}"}, status=400)
        files, patients, studies = [], set(), set()
        for record in records:
            kind = str(record.get("DirectoryRecordType", ""))
            if kind == "PATIENT":
                patients.add(str(record.get("PatientID", "")))
            elif kind == "STUDY":
                studies.add(str(record.get("StudyInstanceUID", "")))
            file_id = record.get("ReferencedFileID")
            if file_id:
                parts = [file_id] if isinstance(file_id, str) else list(file_id)
                files.append("/".join(str(p) for p in parts))
        return JsonResponse({"files": files, "patients": len(patients), "studies": len(studies)})
    finally:
        if ours:
            path.unlink(missing_ok=True)


# DICOM nodes ---------------------------------------------------------------------------


class DicomNodeForm(forms.ModelForm):
    class Meta:
        model = DicomNode
        fields = ["ae_title", "host", "port", "description", "is_active"]
        labels = {"ae_title": "AE title", "host": "Allowed address", "port": "Port (for C-MOVE)"}


@login_required
@require_http_methods(["GET", "POST"])
def dicom_nodes(request: HttpRequest) -> HttpResponse:
    institution = _institution_with_role(request, (Role.INSTITUTION_ADMIN,))
    form = DicomNodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            actions.do_save_dicom_node(institution=institution, acting_user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"{form.cleaned_data['ae_title']} may now call the cloud.")
            return redirect("archive-list-dicom-nodes")
    nodes = DicomNode.objects.filter(institution=institution).order_by("ae_title")
    context = {
        "institution": institution,
        "nodes": nodes,
        "form": form,
        "ae_title": settings.DICOM_AE_TITLE,
        "port": settings.DICOM_PORT,
    }
    return render(request, "archive/dicom_nodes.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def dicom_node(request: HttpRequest, pk: Any) -> HttpResponse:
    institution = _institution_with_role(request, (Role.INSTITUTION_ADMIN,))
    node = DicomNode.objects.filter(pk=pk, institution=institution).first()
    if node is None:
        raise Http404("No such DICOM node")
    if request.method == "POST" and request.POST.get("delete"):
        actions.do_delete_dicom_node(node, acting_user=request.user)
        messages.success(request, f"{node.ae_title} removed.")
        return redirect("archive-list-dicom-nodes")
    form = DicomNodeForm(request.POST or None, instance=node)
    if request.method == "POST" and form.is_valid():
        try:
            actions.do_save_dicom_node(
                institution=institution, acting_user=request.user, node=node, **form.cleaned_data
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"{node.ae_title} saved.")
            return redirect("archive-list-dicom-nodes")
    return render(request, "archive/dicom_node.html", {"institution": institution, "node": node, "form": form})
