"""The viewer page, its API, MPR images and the DICOMweb rendered and thumbnail resources.

DICOMweb (PS3.18 §10.4 Retrieve Rendered, §10.5 thumbnails): study, series,
instance and frame ``rendered`` and ``thumbnail`` resources with the
``accept``, ``quality``, ``viewport`` and ``window`` query parameters, Accept
negotiation, strong ETags and private caching. Every request resolves its
target through the access policy (404 alike for missing and not-yours) and
opening a study is audited once per user and audit window, not per frame.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from archive.access import access_study, seen_as_prior
from archive.copies.restore import pending_restore
from archive.models import Instance, Series, Study
from pacs_cloud import audit
from pacs_cloud.authentication import BasicAuthentication, BearerTokenAuthentication
from pacs_cloud.lib import image_labels
from pacs_cloud.lib.person_names import display_name
from workflow.access import held_tasks

from . import actions, mpr, pixels
from .access import (
    access_instance,
    access_key_image,
    access_series,
    access_series_by_uid,
    access_study_by_uid,
    record_study_view,
)
from .models import KeyImage
from .pixels import RenderError, Viewport
from .render import (
    THUMBNAIL_QUALITY,
    THUMBNAIL_VIEWPORT,
    RenderParams,
    render_animation,
    render_frame,
    render_key,
)

log = logging.getLogger(__name__)

CACHE_CONTROL = "private, max-age=3600"
# Must match the ``viewer-render-mpr`` route (a test checks it).
MPR_URL_TEMPLATE = "/api/v1/viewer/series/{series}/mpr/{plane}/{index}/"
# Display presets offered by the viewer (window centre, width in HU).
PRESETS = {
    "brain": (40, 80),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "abdomen": (40, 400),
}


# Request parsing --------------------------------------------------------------


def _accepted_types(request: Request | HttpRequest) -> list[tuple[str, dict[str, str], float]]:
    """Media ranges from the ``accept`` query parameter or the Accept header, best first.

    PS3.18 8.3.3.1: the query parameter, when present, replaces the header.
    """
    text = request.GET.get("accept") or request.headers.get("Accept") or "*/*"
    ranges = []
    for position, item in enumerate(text.split(",")):
        parts = [p.strip() for p in item.split(";")]
        if not parts[0]:
            continue
        params: dict[str, str] = {}
        quality = 1.0
        for p in parts[1:]:
            name, _, value = p.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            elif name:
                params[name] = value
        ranges.append((parts[0].lower(), params, quality, position))
    ranges.sort(key=lambda r: (-r[2], r[3]))
    return [(t, p, q) for t, p, q, _ in ranges if q > 0]


def _negotiate(request: Request | HttpRequest) -> str:
    """The image media type to answer with (for a multipart answer, that of its parts), or RenderError 406."""
    allowed = list(pixels.MEDIA_TYPES)
    for media, params, _ in _accepted_types(request):
        if media == "multipart/related":
            media = params.get("type", "image/jpeg").lower()
        if media in ("*/*", "image/*"):
            return "image/jpeg" if "image/jpeg" in allowed else allowed[0]
        if media in allowed:
            return media
    kinds = ", ".join(allowed)
    raise RenderError(f"none of the accepted media types can be produced; available: {kinds}", status=406)


def _params(request: Request | HttpRequest, media_type: str, *, thumbnail: bool = False) -> RenderParams:
    query = request.GET
    quality = THUMBNAIL_QUALITY if thumbnail else RenderParams.quality
    if query.get("quality"):
        try:
            quality = int(query["quality"])
        except ValueError:
            raise RenderError("quality must be a whole number from 1 to 100") from None
        if not 1 <= quality <= 100:
            raise RenderError("quality must be a whole number from 1 to 100")
    viewport = Viewport.parse(query["viewport"]) if query.get("viewport") else None
    if thumbnail:
        return RenderParams(media_type=media_type, quality=quality, viewport=viewport or THUMBNAIL_VIEWPORT)
    window = pixels.parse_window(query["window"]) if query.get("window") else None
    preset = None
    if query.get("voi"):
        try:
            preset = int(query["voi"])
        except ValueError:
            raise RenderError("voi must be the number of one of the image's VOI presets") from None
    return RenderParams(media_type=media_type, quality=quality, window=window, preset=preset, viewport=viewport)


def _frame_numbers(text: str, instance: Instance) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RenderError("frame numbers must be a comma-separated list of whole numbers") from None
    if not numbers:
        raise RenderError("no frame number given")
    for n in numbers:
        if not 1 <= n <= max(instance.number_of_frames, 1):
            raise RenderError(f"frame {n} does not exist; the instance has {instance.number_of_frames}", status=404)
    return numbers


# Responses ---------------------------------------------------------------------


def _error(exc: RenderError) -> HttpResponse:
    return JsonResponse({"detail": exc.message}, status=exc.status)


def _not_modified(request: Request | HttpRequest, etag: str) -> bool:
    header = request.headers.get("If-None-Match", "")
    return bool(header) and (header.strip() == "*" or f'"{etag}"' in [t.strip() for t in header.split(",")])


def _cached_headers(response: Any, etag: str) -> Any:
    response["ETag"] = f'"{etag}"'
    response["Cache-Control"] = CACHE_CONTROL
    response["Vary"] = "Accept, Authorization, Cookie"
    return response


def _image_response(request: Request, etag: str, media_type: str, produce: Any) -> HttpResponseBase:
    if _not_modified(request, etag):
        return _cached_headers(HttpResponse(status=304), etag)
    return _cached_headers(HttpResponse(_rendered(produce), content_type=media_type), etag)


def _rendered(produce: Any) -> bytes:
    """The rendered image; an object the renderer cannot take is a 422 with the reason, never a 500."""
    try:
        return produce()
    except RenderError:
        raise
    except Exception as exc:
        log.exception("rendering failed")
        raise RenderError(f"the image cannot be rendered: {type(exc).__name__}: {exc}"[:300], status=422) from exc


MULTIPART_RENDER_AHEAD = 4


async def _render_part(location: str, produce: Any) -> tuple[str, bytes | None]:
    try:
        return location, await sync_to_async(_rendered, thread_sensitive=False)(produce)
    except RenderError as exc:  # one unrenderable image must not cut the rest of the series off
        log.warning("rendering %s for a multipart response failed: %s", location, exc.message)
        return location, None


def _multipart(
    request: Request, parts: list[tuple[str, Any]], media_type: str, etag: str
) -> HttpResponse | StreamingHttpResponse:
    """multipart/related of rendered images (PS3.18 8.7.3.3.2), rendered while streaming."""
    if _not_modified(request, etag):
        return _cached_headers(HttpResponse(status=304), etag)
    boundary = secrets.token_hex(16)

    async def body() -> AsyncIterator[bytes]:
        # Rendering needs no database, so parts are rendered a few at a time in
        # worker threads (file reads, numpy and the JPEG codec release the
        # GIL) and sent in order as each is ready.
        pending: deque[asyncio.Future] = deque()
        upcoming = iter(parts)
        for location, produce in upcoming:
            pending.append(asyncio.ensure_future(_render_part(location, produce)))
            if len(pending) >= MULTIPART_RENDER_AHEAD:
                break
        while pending:
            location, data = await pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append(asyncio.ensure_future(_render_part(*following)))
            if data is None:
                continue
            head = f"--{boundary}\r\nContent-Type: {media_type}\r\nContent-Location: {location}\r\n\r\n"
            yield head.encode() + data + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    response = StreamingHttpResponse(
        body(), content_type=f'multipart/related; type="{media_type}"; boundary={boundary}'
    )
    return _cached_headers(response, etag)


class DicomWebView(APIView):
    """Base of the DICOMweb image resources: bearer token, HTTP Basic or the browser session."""

    authentication_classes = [BearerTokenAuthentication, BasicAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    thumbnail = False

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[Any, str]:
        # Images are negotiated by _negotiate; DRF's own negotiation would
        # refuse "Accept: image/png" before the view runs. Errors stay JSON.
        return (JSONRenderer(), "application/json")

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, RenderError):
            return _error(exc)
        return super().handle_exception(exc)

    def instance_url(self, instance: Instance, frame: int | None = None) -> str:
        series = instance.series
        url = (
            f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}"
        )
        if frame is not None:
            url += f"/frames/{frame}"
        return url + ("/thumbnail" if self.thumbnail else "/rendered")


_SCHEMA_PARAMS = [
    OpenApiParameter("accept", OpenApiTypes.STR, description="Media type, overriding the Accept header"),
    OpenApiParameter("quality", OpenApiTypes.INT, description="1–100, for JPEG and WebP"),
    OpenApiParameter("viewport", OpenApiTypes.STR, description="vw,vh[,sx,sy,sw,sh]"),
    OpenApiParameter("window", OpenApiTypes.STR, description="center,width[,linear|linear-exact|sigmoid]"),
]
_IMAGE_RESPONSES = {
    (200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY),
    304: OpenApiResponse(description="Not modified (ETag)"),
    404: OpenApiResponse(description="No such object, or not visible to the caller"),
    406: OpenApiResponse(description="No acceptable media type"),
}


class FrameRendered(DicomWebView):
    @extend_schema(parameters=_SCHEMA_PARAMS, responses=_IMAGE_RESPONSES, tags=["dicomweb"])
    def get(
        self, request: Request, study_uid: str, series_uid: str, instance_uid: str, frames: str
    ) -> HttpResponseBase:
        target = access_instance(request.user, study_uid, series_uid, instance_uid)
        numbers = _frame_numbers(frames, target)
        multipart = len(numbers) > 1
        media_type = _negotiate(request)
        params = _params(request, media_type, thumbnail=self.thumbnail)
        kind = "thumbnail" if self.thumbnail else "rendered"
        record_study_view(request, target.series.study, via=f"dicomweb.{kind}")
        if not multipart:
            etag = render_key(target, str(numbers[0]), params, kind)
            return _image_response(
                request, etag, media_type, lambda: render_frame(target, numbers[0], params, kind=kind)
            )
        etag = render_key(target, frames, params, kind)
        parts = [(self.instance_url(target, n), _producer(target, n, params, kind)) for n in numbers]
        return _multipart(request, parts, media_type, etag)


class FrameThumbnail(FrameRendered):
    thumbnail = True


def _producer(instance: Instance, frame: int, params: RenderParams, kind: str) -> Any:
    return lambda: render_frame(instance, frame, params, kind=kind)


class InstanceRendered(DicomWebView):
    """One instance: its first frame, or every frame as an animated GIF when image/gif is asked for."""

    @extend_schema(parameters=_SCHEMA_PARAMS, responses=_IMAGE_RESPONSES, tags=["dicomweb"])
    def get(self, request: Request, study_uid: str, series_uid: str, instance_uid: str) -> HttpResponseBase:
        target = access_instance(request.user, study_uid, series_uid, instance_uid)
        media_type = _negotiate(request)
        params = _params(request, media_type, thumbnail=self.thumbnail)
        kind = "thumbnail" if self.thumbnail else "rendered"
        record_study_view(request, target.series.study, via=f"dicomweb.{kind}")
        if media_type == "image/gif" and target.number_of_frames > 1 and not self.thumbnail:
            etag = render_key(target, "all", params, "animation")
            return _image_response(request, etag, media_type, lambda: render_animation(target, params))
        etag = render_key(target, "1", params, kind)
        return _image_response(request, etag, media_type, lambda: render_frame(target, 1, params, kind=kind))


class InstanceThumbnail(InstanceRendered):
    thumbnail = True


def _image_instances(series: Series) -> list[Instance]:
    """The series' displayable instances (those with a pixel matrix), in reading order."""
    instances = [i for i in series.instances.all() if i.rows and i.columns]
    instances.sort(key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_instance_uid))
    return instances


def _representative(series: Series) -> Instance:
    instances = _image_instances(series)
    if not instances:
        raise RenderError("the series has no images", status=404)
    return instances[len(instances) // 2]


def _study_series(study: Study) -> list[Series]:
    return sorted(
        study.series.all(), key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)
    )


class SeriesRendered(DicomWebView):
    """Every frame of every image in the series as multipart/related; the thumbnail is its middle image."""

    @extend_schema(parameters=_SCHEMA_PARAMS, responses=_IMAGE_RESPONSES, tags=["dicomweb"])
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponseBase:
        target = access_series_by_uid(request.user, study_uid, series_uid)
        kind = "thumbnail" if self.thumbnail else "rendered"
        record_study_view(request, target.study, via=f"dicomweb.{kind}")
        if self.thumbnail:
            media_type = _negotiate(request)
            params = _params(request, media_type, thumbnail=True)
            instance = _representative(target)
            instance.series = target
            etag = render_key(instance, "1", params, kind)
            return _image_response(request, etag, media_type, lambda: render_frame(instance, 1, params, kind=kind))
        media_type = _negotiate(request)
        params = _params(request, media_type)
        return _rendered_parts(self, request, [target], params, media_type)


class SeriesThumbnail(SeriesRendered):
    thumbnail = True


class StudyRendered(DicomWebView):
    """Every frame of the study as multipart/related; the thumbnail is the first series' middle image."""

    @extend_schema(parameters=_SCHEMA_PARAMS, responses=_IMAGE_RESPONSES, tags=["dicomweb"])
    def get(self, request: Request, study_uid: str) -> HttpResponseBase:
        target = access_study_by_uid(request.user, study_uid)
        kind = "thumbnail" if self.thumbnail else "rendered"
        record_study_view(request, target, via=f"dicomweb.{kind}")
        series_list = _study_series(target)
        if self.thumbnail:
            media_type = _negotiate(request)
            params = _params(request, media_type, thumbnail=True)
            for series in series_list:
                if _image_instances(series):
                    instance = _representative(series)
                    etag = render_key(instance, "1", params, kind)
                    return _image_response(request, etag, media_type, _producer(instance, 1, params, kind))
            raise RenderError("the study has no images", status=404)
        media_type = _negotiate(request)
        params = _params(request, media_type)
        return _rendered_parts(self, request, series_list, params, media_type)


class StudyThumbnail(StudyRendered):
    thumbnail = True


def _rendered_parts(
    view: DicomWebView, request: Request, series_list: list[Series], params: RenderParams, media_type: str
) -> HttpResponse | StreamingHttpResponse:
    parts = []
    digest = hashlib.sha256(params.key().encode())
    for series in series_list:
        for instance in _image_instances(series):
            instance.series = series
            digest.update(instance.sha256.encode())
            for n in range(1, max(instance.number_of_frames, 1) + 1):
                parts.append((view.instance_url(instance, n), _producer(instance, n, params, "rendered")))
    if not parts:
        raise RenderError("nothing to render: no images", status=404)
    return _multipart(request, parts, media_type, digest.hexdigest()[:40])


# MPR ---------------------------------------------------------------------------


class MprImage(DicomWebView):
    """One reformatted plane (or slab) of a series volume."""

    @extend_schema(
        parameters=[
            *_SCHEMA_PARAMS,
            OpenApiParameter("slab", OpenApiTypes.NUMBER, description="Slab thickness in mm (0: a single plane)"),
            OpenApiParameter("mode", OpenApiTypes.STR, description="mip, minip or avg"),
        ],
        responses=_IMAGE_RESPONSES,
        tags=["viewer"],
        operation_id="viewer_mpr_image",
    )
    def get(self, request: Request, series_id: str, plane: str, index: int) -> HttpResponseBase:
        series = access_series(request.user, series_id)
        media_type = _negotiate(request)
        params = _params(request, media_type)
        try:
            slab = float(request.query_params.get("slab") or 0)
        except ValueError:
            raise RenderError("slab must be a thickness in millimetres") from None
        if not 0 <= slab <= 500:
            raise RenderError("slab must be between 0 and 500 mm")
        mode = (request.query_params.get("mode") or "mip").lower()
        if plane not in mpr.PLANES:
            raise RenderError(f"plane must be one of {', '.join(mpr.PLANES)}", status=404)
        if mode not in mpr.MODES:
            raise RenderError(f"mode must be one of {', '.join(mpr.MODES)}")
        record_study_view(request, series.study, via="viewer.mpr")
        key = mpr.volume_key(series)
        key_text = f"{pixels.ENGINE_VERSION}|mpr|{key}|{plane}|{index}|{slab}|{mode}|{params.key()}"
        etag = hashlib.sha256(key_text.encode()).hexdigest()[:40]

        def produce() -> bytes:
            volume = mpr.series_volume(series, key)
            plane_data = mpr.reformat(volume, plane, index, slab_mm=slab, mode=mode)
            voi = mpr.volume_voi(volume, params.window, params.preset)
            display = pixels.modality_display(plane_data, voi, volume.infos[0])
            image = pixels.to_image(display, aspect=mpr.plane_aspect(volume, plane), viewport=params.viewport)
            return pixels.encode(image, media_type, params.quality)

        return _image_response(request, etag, media_type, produce)


# The viewer page and its API ------------------------------------------------------


@login_required
@audit.records_refusal("study.view_refused", object_type="study", key="study_id")
def open_study(request: HttpRequest, study_id: str) -> HttpResponse:
    """The browser viewer for one study (audited as an opening of the study)."""
    study = access_study(request.user, pk=study_id)
    record_study_view(request, study, via="viewer")
    pending = pending_restore(study, requested_by=request.user)
    if pending is not None:
        context = {"study": study, "patient": study.patient, "pending": pending}
        return render(request, "viewer/restoring.html", {**context, "refresh_seconds": min(60, pending.retry_after)})
    return render(
        request,
        "viewer/study.html",
        {
            "study": study,
            "patient": study.patient,
            "manifest_url": reverse("viewer-api-study", args=[study.pk]),
            "key_images_url": reverse("viewer-list-key-images", args=[study.pk]),
            # The reader holding the study's reading task goes from the images straight to the report.
            "holds_reading_task": held_tasks(request.user).filter(study=study).exists(),
        },
    )


def _value(metadata: dict, tag: str) -> list:
    return list((metadata.get(tag) or {}).get("Value") or [])


def _floats(metadata: dict, tag: str, count: int) -> list[float] | None:
    """A multi-valued DS attribute as ``count`` numbers, or None when absent or malformed."""
    try:
        values = [float(v) for v in _value(metadata, tag)]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _spacing(metadata: dict) -> tuple[list[float] | None, str]:
    """Pixel spacing for measurement and what it is calibrated to (PS3.3 10.7.1.3)."""
    spacing = mpr._functional(metadata, 0, "00289110", "00280030")
    kind = "patient"
    if len(spacing) != 2:
        spacing, kind = _value(metadata, "00181164"), "detector"  # Imager Pixel Spacing
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError):
        values = []
    if len(values) == 2 and values[0] > 0 and values[1] > 0:
        return values, kind
    return None, ""


def _windows(metadata: dict) -> list[dict[str, Any]]:
    centers = mpr._functional(metadata, 0, "00289132", "00281050")
    widths = mpr._functional(metadata, 0, "00289132", "00281051")
    explanations = _value(metadata, "00281055")
    out = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        try:
            out.append(
                {
                    "center": float(c),
                    "width": float(w),
                    "explanation": str(explanations[i]) if i < len(explanations) else "",
                }
            )
        except (TypeError, ValueError):
            continue
    return out


def _value_range(metadata: dict) -> list[float] | None:
    """The modality values the stored bits can hold: the starting point for window dragging."""
    try:
        bits = int(_value(metadata, "00280101")[0])
        signed = int((_value(metadata, "00280103") or [0])[0]) == 1
        slope = float((mpr._functional(metadata, 0, "00289145", "00281053") or [1])[0])
        intercept = float((mpr._functional(metadata, 0, "00289145", "00281052") or [0])[0])
    except (IndexError, TypeError, ValueError):
        return None
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    return [ends[0], ends[1]]


def _text(metadata: dict, tag: str) -> str:
    values = _value(metadata, tag)
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # PN in DICOM JSON
        return str(value.get("Alphabetic", ""))
    return str(value)


def image_label(series: Series, instance: Instance, frame: int | None = None) -> str:
    """An image as readers name it: "Series 2 · Image 14", with "· Frame 3" within a multi-frame image."""
    return image_labels.image_label(
        series.series_number,
        instance.instance_number,
        series_description=series.description,
        frame=frame,
        number_of_frames=instance.number_of_frames,
    )


def _key_image_json(key_image: KeyImage) -> dict[str, Any]:
    instance = key_image.instance
    series = instance.series
    return {
        "label": image_label(series, instance, key_image.frame),
        "id": str(key_image.pk),
        "study": str(key_image.study_id),
        "series": str(series.pk),
        "instance": str(instance.pk),
        "sop_instance_uid": instance.sop_instance_uid,
        "frame": key_image.frame,
        "note": key_image.note,
        "user": key_image.user.get_username(),
        "mine": None,
        "created": key_image.created.isoformat(),
        "rendered": (
            f"/dicomweb/studies/{key_image.study.study_instance_uid}/series/{series.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}/frames/{key_image.frame}/rendered"
        ),
    }


def study_manifest(study: Study, user: Any) -> dict[str, Any]:
    """Everything the viewer page needs about a study, from the index and stored metadata."""
    patient = study.patient
    series_out = []
    for series in _study_series(study):
        instances = _image_instances(series)
        if not instances:
            continue
        middle = instances[len(instances) // 2].metadata or {}
        items = []
        for instance in instances:
            meta = instance.metadata or {}
            spacing, kind = _spacing(meta)
            items.append(
                {
                    "id": str(instance.pk),
                    "sop": instance.sop_instance_uid,
                    "number": instance.instance_number,
                    "label": image_label(series, instance),
                    "frames": max(instance.number_of_frames, 1),
                    "rows": instance.rows,
                    "columns": instance.columns,
                    "pixel_spacing": spacing,
                    "spacing_kind": kind,
                    "slice_location": _text(meta, "00201041"),
                    # Image Position (Patient): where comparison views line up slices (viewer/static/compare.js).
                    "position": _floats(meta, "00200032", 3),
                }
            )
        series_out.append(
            {
                "id": str(series.pk),
                "uid": series.series_instance_uid,
                "number": series.series_number,
                "modality": series.modality,
                "description": series.description,
                "body_part": series.body_part,
                "thumbnail": (
                    f"/dicomweb/studies/{study.study_instance_uid}/series/{series.series_instance_uid}/thumbnail"
                ),
                "instances": items,
                "windows": _windows(middle),
                "value_range": _value_range(middle),
                "photometric": _text(middle, "00280004"),
                "orientation": _floats(middle, "00200037", 6),
                "mpr": mpr.try_describe(series, instances) if len(items) >= 3 or _multiframe(instances) else None,
            }
        )
    key_images = KeyImage.objects.filter(study=study).select_related("instance__series", "user", "study")
    key_image_rows = []
    for k in key_images:
        row = _key_image_json(k)
        row["mine"] = k.user_id == user.pk
        key_image_rows.append(row)
    return {
        "id": str(study.pk),
        "study_instance_uid": study.study_instance_uid,
        "patient": {
            "name": patient.name,
            "display_name": display_name(patient.name),
            "id": patient.patient_id,
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
            "sex": patient.sex,
        },
        "study_date": study.study_date.isoformat() if study.study_date else None,
        "description": study.description,
        "accession_number": study.accession_number,
        # Image modalities: the archived report is shown as the report, not as a series.
        "modalities": "\\".join(study.image_modalities),
        "has_report_document": study.has_report_document,
        "series": series_out,
        "presets": {name: {"center": c, "width": w} for name, (c, w) in PRESETS.items()},
        "key_images": key_image_rows,
        "urls": {
            "rendered": "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
            "mpr": MPR_URL_TEMPLATE,
            "key_images": reverse("viewer-list-key-images", args=[study.pk]),
            # The archived report opens as the report, not as a series of images.
            "report": reverse("reports-open-study-report", args=[study.pk]) if study.has_report_document else None,
        },
    }


def _multiframe(instances: list[Instance]) -> bool:
    return any(i.number_of_frames >= 3 for i in instances)


class StudyManifest(APIView):
    """The viewer's description of a study: patient, series, images, geometry, presets, key images."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["viewer"], operation_id="viewer_study_manifest")
    @audit.records_refusal("study.view_refused", object_type="study", key="study_id")
    def get(self, request: Request, study_id: str) -> Response:
        study = access_study(request.user, pk=study_id)
        record_study_view(request, study, via="viewer.api")
        return Response(study_manifest(study, request.user))


class KeyImageInput(serializers.Serializer):
    instance = serializers.UUIDField(help_text="The instance's id (from the study manifest)")
    frame = serializers.IntegerField(min_value=1, default=1)
    note = serializers.CharField(max_length=actions.MAX_NOTE, allow_blank=True, required=False, default="")


class KeyImageList(APIView):
    """Key images of a study (everyone's), and marking a new one."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["viewer"], operation_id="viewer_key_images_list")
    def get(self, request: Request, study_id: str) -> Response:
        study = access_study(request.user, pk=study_id)
        rows = []
        for k in KeyImage.objects.filter(study=study).select_related("instance__series", "user", "study"):
            row = _key_image_json(k)
            row["mine"] = k.user_id == request.user.pk
            rows.append(row)
        return Response({"results": rows})

    @extend_schema(
        request=KeyImageInput,
        responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT},
        tags=["viewer"],
        operation_id="viewer_key_images_mark",
    )
    def post(self, request: Request, study_id: str) -> Response:
        study = access_study(request.user, pk=study_id)
        if seen_as_prior(request.user, study):
            return Response({"detail": "A prior is shown read-only."}, status=status.HTTP_403_FORBIDDEN)
        data = KeyImageInput(data=request.data)
        data.is_valid(raise_exception=True)
        instance = (
            Instance.objects.filter(pk=data.validated_data["instance"], series__study=study)
            .select_related("series__study__patient")
            .first()
        )
        if instance is None:
            return Response({"instance": ["No such instance in this study."]}, status=status.HTTP_400_BAD_REQUEST)
        existed = KeyImage.objects.filter(instance=instance, frame=data.validated_data["frame"], user=request.user)
        existed_before = existed.exists()
        try:
            key_image = actions.do_mark_key_image(
                acting_user=request.user,
                instance=instance,
                frame=data.validated_data["frame"],
                note=data.validated_data["note"],
            )
        except ValidationError as exc:
            return Response({"detail": exc.messages}, status=status.HTTP_400_BAD_REQUEST)
        row = _key_image_json(KeyImage.objects.select_related("instance__series", "user", "study").get(pk=key_image.pk))
        row["mine"] = True
        return Response(row, status=status.HTTP_200_OK if existed_before else status.HTTP_201_CREATED)


class KeyImageDetail(APIView):
    @extend_schema(responses={204: None}, tags=["viewer"], operation_id="viewer_key_images_unmark")
    def delete(self, request: Request, key_image_id: str) -> Response:
        key_image = access_key_image(request.user, key_image_id)
        try:
            actions.do_unmark_key_image(key_image, acting_user=request.user)
        except PermissionDenied as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
        return Response(status=status.HTTP_204_NO_CONTENT)
