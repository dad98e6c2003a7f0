"""REST of the 3D viewer: oblique and curved reformats as images, measurements in mm.

Stateless and cacheable: each request names its plane or path in the volume
frame (mm, see ``reslice``) and reads the series volume from the 2D/MPR
cache, so any web process answers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pacs_cloud import audit

from .. import mpr
from ..access import record_study_view
from ..pixels import RenderError, Window, parse_window
from ..views import DicomWebView
from . import measure, reslice
from .access import access_volume_series
from .actions import do_save_snapshot
from .scene import encode_frame


def _floats(text: Any, count: int, what: str) -> np.ndarray | None:
    if text is None or text == "":
        return None
    try:
        values = np.array([float(v) for v in str(text).split(",")], dtype=float)
    except ValueError:
        raise RenderError(f"{what} is {count} comma-separated numbers") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise RenderError(f"{what} is {count} comma-separated numbers")
    return values


def _number(q: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    text = q.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(str(text))
    except ValueError:
        raise RenderError(f"{name} must be a number") from None
    if not low <= value <= high:
        raise RenderError(f"{name} must lie between {low:g} and {high:g}")
    return value


def _window(q: Mapping[str, Any], volume: mpr.Volume) -> Window:
    text = q.get("window")
    if text:
        return parse_window(text)
    return volume.default_window or Window(40.0, 400.0, "LINEAR", "")


def _grey(values: np.ndarray, window: Window) -> np.ndarray:
    low = window.center - window.width / 2
    grey = np.clip((values - low) / max(window.width, 1.0) * 255.0, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _picture(values: np.ndarray, window: Window, quality: int) -> bytes:
    return encode_frame(_grey(values, window), "image/jpeg", quality)


def _image(data: bytes, headers: dict[str, str]) -> HttpResponse:
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    for name, value in headers.items():
        response[name] = value
    return response


def _volume_for(request: Request, series_id: str) -> tuple[Any, mpr.Volume]:
    series = access_volume_series(request.user, series_id)
    record_study_view(request, series.study, via="viewer.3d")
    return series, mpr.series_volume(series)


_PLANE_PARAMS = [
    OpenApiParameter("plane", OpenApiTypes.STR, description="axial, coronal or sagittal: the plane before turning"),
    OpenApiParameter("tilt", OpenApiTypes.NUMBER, description="degrees about the picture's horizontal axis"),
    OpenApiParameter("spin", OpenApiTypes.NUMBER, description="degrees about the picture's vertical axis"),
    OpenApiParameter("centre", OpenApiTypes.STR, description="x,y,z in mm of the volume frame (default: its middle)"),
    OpenApiParameter("width", OpenApiTypes.INT),
    OpenApiParameter("height", OpenApiTypes.INT),
    OpenApiParameter("pixel", OpenApiTypes.NUMBER, description="mm per pixel"),
    OpenApiParameter("slab", OpenApiTypes.NUMBER, description="slab thickness in mm (0: the plane)"),
    OpenApiParameter("mode", OpenApiTypes.STR, description="mip, minip or avg"),
    OpenApiParameter("window", OpenApiTypes.STR, description="center,width"),
]


def oblique_of(volume: mpr.Volume, q: Mapping[str, Any]) -> tuple[np.ndarray, reslice.Plane]:
    """The oblique plane (or slab) a request's parameters name."""
    right, down = reslice.base_axes(volume, str(q.get("plane") or "axial"))
    right, down = reslice.rotated_axes(
        right, down, _number(q, "tilt", 0.0, -180, 180), _number(q, "spin", 0.0, -180, 180)
    )
    centre = _floats(q.get("centre"), 3, "centre")
    size = reslice.extent(volume)
    plane = reslice.Plane(
        centre=size / 2 if centre is None else centre,
        right=right,
        down=down,
        width=int(_number(q, "width", 256, 8, reslice.MAX_PIXELS)),
        height=int(_number(q, "height", 256, 8, reslice.MAX_PIXELS)),
        pixel_mm=_number(q, "pixel", float(np.linalg.norm(size)) / 256, 0.05, 20),
    )
    values = reslice.oblique(volume, plane, slab_mm=_number(q, "slab", 0.0, 0, 200), mode=str(q.get("mode") or "mip"))
    return values, plane


class ObliqueImage(DicomWebView):
    """Any plane through the volume, or a slab along its normal."""

    @extend_schema(parameters=_PLANE_PARAMS, responses={(200, "image/jpeg"): OpenApiTypes.BINARY}, tags=["viewer"])
    @audit.records_refusal("study.view_refused", object_type="series", key="series_id")
    def get(self, request: Request, series_id: str) -> HttpResponse:
        _, volume = _volume_for(request, series_id)
        values, plane = oblique_of(volume, request.query_params)
        return _image(
            _picture(values, _window(request.query_params, volume), 85),
            {
                "X-Plane-Right": ",".join(f"{v:.5f}" for v in plane.right),
                "X-Plane-Down": ",".join(f"{v:.5f}" for v in plane.down),
                "X-Plane-Normal": ",".join(f"{v:.5f}" for v in plane.normal),
            },
        )


def _path(text: Any) -> np.ndarray:
    if not text:
        raise RenderError("path is x,y,z;x,y,z;… in mm")
    try:
        return np.array([[float(v) for v in point.split(",")] for point in str(text).split(";")], dtype=float)
    except ValueError:
        raise RenderError("path is x,y,z;x,y,z;… in mm") from None


def curved_of(volume: mpr.Volume, q: Mapping[str, Any]) -> tuple[np.ndarray, reslice.Centreline, reslice.Plane | None]:
    """The straightened path, or its cross-section when the parameters say ``at``."""
    reference = _floats(q.get("reference"), 3, "reference")
    line = reslice.centreline(
        _path(q.get("path")),
        _number(q, "pixel", float(reslice.spacing(volume).min()), 0.1, 10),
        np.array([0.0, 0.0, 1.0]) if reference is None else reference,
    )
    span = _number(q, "span", 40.0, 4, 300)
    if q.get("at") not in (None, ""):
        values, plane = reslice.cross_section(volume, line, _number(q, "at", 0.0, 0, 1e5), span)
        return values, line, plane
    return reslice.straightened(volume, line, span), line, None


class CurvedImage(DicomWebView):
    """A curved reformat along a clicked path: the vessel straightened, or its cross-section ``at`` mm along it."""

    @extend_schema(
        parameters=[
            OpenApiParameter("path", OpenApiTypes.STR, description="x,y,z;x,y,z;… in mm of the volume frame"),
            OpenApiParameter("reference", OpenApiTypes.STR, description="x,y,z: the direction across the picture"),
            OpenApiParameter("span", OpenApiTypes.NUMBER, description="mm across the path"),
            OpenApiParameter("pixel", OpenApiTypes.NUMBER, description="mm per pixel"),
            OpenApiParameter("at", OpenApiTypes.NUMBER, description="mm along the path: the cross-section there"),
            OpenApiParameter("window", OpenApiTypes.STR, description="center,width"),
        ],
        responses={(200, "image/jpeg"): OpenApiTypes.BINARY},
        tags=["viewer"],
    )
    @audit.records_refusal("study.view_refused", object_type="series", key="series_id")
    def get(self, request: Request, series_id: str) -> HttpResponse:
        _, volume = _volume_for(request, series_id)
        values, line, _ = curved_of(volume, request.query_params)
        return _image(
            _picture(values, _window(request.query_params, volume), 85), {"X-Path-Length-Mm": f"{line.length_mm:.2f}"}
        )


class MeasurementInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["distance", "angle", "region"])
    points = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), max_length=3)
    low = serializers.FloatField(required=False)
    high = serializers.FloatField(required=False)


class Measurement(APIView):
    """A distance or angle between points (mm of the volume frame), or a region's volume by seed fill."""

    @extend_schema(request=MeasurementInput, responses={200: OpenApiTypes.OBJECT}, tags=["viewer"])
    @audit.records_refusal("study.view_refused", object_type="series", key="series_id")
    def post(self, request: Request, series_id: str) -> Response:
        _, volume = _volume_for(request, series_id)
        form = MeasurementInput(data=request.data)
        form.is_valid(raise_exception=True)
        kind, points = form.validated_data["kind"], form.validated_data["points"]
        try:
            if kind == "distance":
                if len(points) != 2:
                    raise RenderError("a distance needs two points")
                return Response({"kind": kind, "distance_mm": round(measure.distance(volume, *points), 3)})
            if kind == "angle":
                if len(points) != 3:
                    raise RenderError("an angle needs three points: end, vertex, end")
                return Response({"kind": kind, "angle_degrees": round(measure.angle(volume, *points), 3)})
            if len(points) != 1 or "low" not in form.validated_data or "high" not in form.validated_data:
                raise RenderError("a region needs one seed point and the range low, high")
            found = measure.region(volume, points[0], form.validated_data["low"], form.validated_data["high"])
            return Response({"kind": kind, **found})
        except RenderError as exc:
            return Response({"detail": str(exc)}, status=exc.status)


class SnapshotInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["oblique", "curved"])
    parameters = serializers.DictField(help_text="the query parameters of the oblique or curved image")
    note = serializers.CharField(required=False, allow_blank=True, max_length=200)


class Snapshot(APIView):
    """Save an oblique or curved reformat into the study: a Secondary Capture, marked as the caller's key image."""

    @extend_schema(request=SnapshotInput, responses={201: OpenApiTypes.OBJECT}, tags=["viewer"])
    @audit.records_refusal("study.view_refused", object_type="series", key="series_id")
    def post(self, request: Request, series_id: str) -> Response:
        series, volume = _volume_for(request, series_id)
        form = SnapshotInput(data=request.data)
        form.is_valid(raise_exception=True)
        kind, q = form.validated_data["kind"], {k: str(v) for k, v in form.validated_data["parameters"].items()}
        try:
            if kind == "oblique":
                values, plane = oblique_of(volume, q)
                right, down = plane.right, plane.down
            else:
                values, line, section = curved_of(volume, q)
                right, down = (section.right, section.down) if section else (line.normals[0], line.tangents[0])
        except RenderError as exc:
            return Response({"detail": str(exc)}, status=exc.status)
        axes = scene_axes(volume)
        key_image = do_save_snapshot(
            acting_user=request.user,
            series=series,
            picture=_grey(values, _window(q, volume)),
            parameters={"kind": kind, **q},
            right=axes.T @ right,
            down=axes.T @ down,
            description=form.validated_data.get("note") or f"{kind.capitalize()} reformat",
        )
        return Response(snapshot_json(key_image), status=201)


def scene_axes(volume: mpr.Volume) -> np.ndarray:
    """Rows: the patient direction of each volume-frame axis."""
    g = volume.geometry
    return np.array([g.row_direction, g.column_direction, g.normal], dtype=float)


def snapshot_json(key_image: Any) -> dict[str, Any]:
    instance = key_image.instance
    return {
        "key_image": str(key_image.pk),
        "study_instance_uid": instance.series.study.study_instance_uid,
        "series_instance_uid": instance.series.series_instance_uid,
        "sop_instance_uid": instance.sop_instance_uid,
    }
