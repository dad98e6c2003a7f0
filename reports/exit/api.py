"""The exit's REST API: ``/api/v1/exits/`` (exports with progress, download, offboarding, certificate)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from pacs_cloud import audit
from pacs_cloud.access import access_institution
from pacs_cloud.models import Role

from . import actions, offboard
from .access import access_exit_job, access_offboarding, access_own_exit_job, visible_exit_jobs
from .export import COPY_BUFFER, archive_path
from .models import ExitJob


class ExitJobSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)
    download = serializers.SerializerMethodField()

    class Meta:
        model = ExitJob
        fields = [
            "id",
            "institution_id",
            "institution_name",
            "institution_slug",
            "requested_by",
            "destination",
            "bucket",
            "prefix",
            "state",
            "attempt",
            "progress",
            "files_total",
            "files_done",
            "bytes_total",
            "bytes_done",
            "archive_size",
            "archive_sha256",
            "manifest_sha256",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "offboarded_at",
            "offboarded_by",
            "download",
        ]
        read_only_fields = fields

    def get_download(self, job: ExitJob) -> str | None:
        if job.state == ExitJob.State.DONE and job.destination == ExitJob.Destination.DOWNLOAD:
            return f"/api/v1/exits/{job.pk}/download/"
        return None


class ExitRequestSerializer(serializers.Serializer):
    institution = serializers.UUIDField()
    destination = serializers.ChoiceField(choices=ExitJob.Destination.choices, default=ExitJob.Destination.DOWNLOAD)
    bucket = serializers.CharField(max_length=63, required=False, default="")
    prefix = serializers.CharField(max_length=200, required=False, default="")


class OffboardSerializer(serializers.Serializer):
    confirm = serializers.CharField(help_text="The institution's short name (slug), typed to confirm.")


class CertificateSerializer(serializers.Serializer):
    certificate = serializers.DictField()
    signature = serializers.CharField(help_text="Ed25519 signature of the canonical certificate, base64.")
    public_key = serializers.CharField(help_text="Raw Ed25519 public key, base64.")
    key_fingerprint = serializers.CharField()
    valid = serializers.BooleanField()


def _refused(exc: actions.ExitRefused) -> Response:
    return Response({"detail": str(exc), "code": exc.code}, status=exc.status)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _slice(path: Any, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        while length > 0:
            chunk = handle.read(min(COPY_BUFFER, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def ranged_file_response(
    request: Request, path: Any, size: int, etag: str, filename: str
) -> HttpResponse | FileResponse | StreamingHttpResponse:
    """The file, or the one byte range asked for (RFC 9110 14.2: ``Range``, ``If-Range``, 206/416)."""
    wanted = request.headers.get("Range", "")
    if_range = request.headers.get("If-Range", "")
    match = _RANGE.match(wanted.strip()) if wanted and (not if_range or if_range == etag) else None
    response: HttpResponse | FileResponse | StreamingHttpResponse
    if match is None or not (match.group(1) or match.group(2)):
        response = FileResponse(open(path, "rb"), as_attachment=True, filename=filename)
    else:
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(size - int(last), 0), size - 1
        if start >= size or start > end:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        response = StreamingHttpResponse(_slice(path, start, end - start + 1), status=206)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Content-Type"] = "application/x-tar"
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    return response


class ExitJobViewSet(viewsets.ViewSet):
    """An institution's exports (its administrator) and offboarding (the platform administrator)."""

    @extend_schema(responses={200: ExitJobSerializer(many=True)}, tags=["exit"])
    def list(self, request: Request) -> Response:
        rows = list(visible_exit_jobs(request.user)[:200])
        return Response({"results": ExitJobSerializer(rows, many=True).data})

    @extend_schema(request=ExitRequestSerializer, responses={201: ExitJobSerializer}, tags=["exit"])
    def create(self, request: Request) -> Response:
        data = ExitRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        institution = access_institution(request.user, data.validated_data["institution"], Role.INSTITUTION_ADMIN)
        try:
            job = actions.do_request_export(
                institution,
                acting_user=request.user,
                destination=data.validated_data["destination"],
                bucket=data.validated_data["bucket"],
                prefix=data.validated_data["prefix"],
                request=request,
            )
        except actions.ExitRefused as exc:
            return _refused(exc)
        return Response(ExitJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: ExitJobSerializer}, tags=["exit"])
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ExitJobSerializer(access_exit_job(request.user, pk)).data)

    @extend_schema(request=None, responses={200: ExitJobSerializer}, tags=["exit"])
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        job = access_own_exit_job(request.user, pk)
        try:
            job = actions.do_cancel_export(job, acting_user=request.user, request=request)
        except actions.ExitRefused as exc:
            return _refused(exc)
        return Response(ExitJobSerializer(job).data)

    @extend_schema(request=None, responses={200: ExitJobSerializer}, tags=["exit"])
    @action(detail=True, methods=["post"])
    def restart(self, request: Request, pk: str) -> Response:
        job = access_own_exit_job(request.user, pk)
        try:
            job = actions.do_restart_export(job, acting_user=request.user, request=request)
        except actions.ExitRefused as exc:
            return _refused(exc)
        return Response(ExitJobSerializer(job).data)

    @extend_schema(
        responses={
            (200, "application/x-tar"): OpenApiResponse(OpenApiTypes.BINARY, description="The whole export"),
            (206, "application/x-tar"): OpenApiResponse(OpenApiTypes.BINARY, description="The range asked for"),
        },
        tags=["exit"],
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str) -> HttpResponse | FileResponse | StreamingHttpResponse:
        """The export as one tar; ``Range: bytes=N-`` resumes a broken download (``If-Range`` with the ETag)."""
        job = access_own_exit_job(request.user, pk)
        path = archive_path(job)
        if job.state != ExitJob.State.DONE or job.destination != ExitJob.Destination.DOWNLOAD or not path.exists():
            raise Http404("No such export")
        audit.record(
            "exit.export.download",
            request=request,
            institution=job.institution_id,
            object_type="exit_job",
            object_id=job.pk,
            detail={"range": request.headers.get("Range", "")},
        )
        filename = f"{job.institution_slug}-export-{job.created_at:%Y%m%d}.tar"
        return ranged_file_response(request, path, path.stat().st_size, f'"{job.archive_sha256}"', filename)

    @extend_schema(request=OffboardSerializer, responses={200: ExitJobSerializer}, tags=["exit"])
    @action(detail=True, methods=["post"])
    def offboard(self, request: Request, pk: str) -> Response:
        """Remove the job's institution everywhere (platform administrator; the body confirms with its slug)."""
        job = access_offboarding(request.user, pk)
        data = OffboardSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            job = actions.do_offboard_institution(
                job, acting_user=request.user, confirm=data.validated_data["confirm"], request=request
            )
        except actions.ExitRefused as exc:
            return _refused(exc)
        return Response(ExitJobSerializer(job).data)

    @extend_schema(responses={200: CertificateSerializer}, tags=["exit"])
    @action(detail=True, methods=["get"])
    def certificate(self, request: Request, pk: str) -> Response:
        """The signed certificate of deletion of an offboarded institution, and whether it verifies."""
        job = access_offboarding(request.user, pk)
        if job.certificate is None:
            raise Http404("No certificate")
        return Response(offboard.certificate_of(job))
