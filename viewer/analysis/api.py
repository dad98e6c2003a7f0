"""REST API of DCE-MRI analysis: ``/api/v1/analysis/dce/…``.

``curve-fit/`` fits a pharmacokinetic model to one tissue curve sent by the
caller (no archived data is read), for programs and for the viewer's region
analysis. Callers need a role that reads images; every fit is audited.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import numpy as np
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from archive.access import access_study, visible_studies
from archive.models import Instance, Series, Study
from pacs_cloud import audit
from pacs_cloud.access import HasClinicalRole
from pacs_cloud.tenancy import current_institution
from viewer.render import load_dataset

from . import actions, enhancement, fitting, maps, parametric
from .access import access_map_job, access_region
from .aif import DEFAULT_HEMATOCRIT
from .models import DceMapJob, DceRegionAnalysis
from .region import analyse_region
from .series import NotDynamic
from .tasks import JobError

# One curve of a long, finely sampled acquisition fits in well under a second;
# this bounds the work one request may ask for.
MAX_POINTS = 4096


def _finite_list(name: str, values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(array)):
        raise serializers.ValidationError({name: ["every value must be a finite number"]})
    return array


def _validated(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    return data.validated_data


def _check_times(name: str, t: np.ndarray) -> None:
    if np.any(t < 0):
        raise serializers.ValidationError(
            {name: ["times are seconds from the start of the acquisition: none negative"]}
        )
    if np.any(np.diff(t) <= 0):
        raise serializers.ValidationError({name: ["times must increase strictly"]})


class AifSerializer(serializers.Serializer):
    t = serializers.ListField(
        child=serializers.FloatField(), required=False, max_length=MAX_POINTS, help_text="seconds"
    )
    ca = serializers.ListField(
        child=serializers.FloatField(),
        required=False,
        max_length=MAX_POINTS,
        help_text="arterial plasma concentration, mM",
    )
    population = serializers.ChoiceField(choices=["parker"], required=False)
    bolus_arrival_s = serializers.FloatField(required=False, default=0.0, min_value=0.0)
    hematocrit = serializers.FloatField(
        required=False,
        default=DEFAULT_HEMATOCRIT,
        min_value=0.0,
        max_value=0.9,
        help_text="turns the population AIF (whole blood) into plasma concentration",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        measured = "t" in data or "ca" in data
        if measured and "population" in data:
            raise serializers.ValidationError("give either a measured AIF (t, ca) or a population AIF, not both")
        if not measured and "population" not in data:
            raise serializers.ValidationError("give a measured AIF (t and ca) or {'population': 'parker'}")
        if measured:
            if "t" not in data or "ca" not in data:
                raise serializers.ValidationError("a measured AIF needs both t and ca")
            if len(data["t"]) != len(data["ca"]):
                raise serializers.ValidationError(f"t and ca differ in length ({len(data['t'])} and {len(data['ca'])})")
            if len(data["t"]) < 2:
                raise serializers.ValidationError("a measured AIF needs at least two samples")
        return data


class CurveFitInput(serializers.Serializer):
    t = serializers.ListField(child=serializers.FloatField(), max_length=MAX_POINTS, help_text="seconds")
    ct = serializers.ListField(
        child=serializers.FloatField(), max_length=MAX_POINTS, help_text="tissue concentration, mM"
    )
    aif = AifSerializer()
    model = serializers.ChoiceField(choices=list(fitting.MODELS))
    fit_delay = serializers.BooleanField(default=False, help_text="also fit the arterial delay (0–30 s)")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        t = _finite_list("t", data["t"])
        ct = _finite_list("ct", data["ct"])
        if len(t) != len(ct):
            raise serializers.ValidationError({"ct": [f"t and ct differ in length ({len(t)} and {len(ct)})"]})
        needed = fitting.free_parameters(data["model"]) + 1 + int(data["fit_delay"]) + 2
        if len(t) < needed:
            raise serializers.ValidationError({"t": [f"the {data['model']} fit needs at least {needed} samples"]})
        _check_times("t", t)
        spec = data["aif"]
        if "population" in spec:
            aif = fitting.population_aif(t, spec["bolus_arrival_s"], spec["hematocrit"])
        else:
            ta = _finite_list("aif", spec["t"])
            ca = _finite_list("aif", spec["ca"])
            try:
                _check_times("t", ta)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"aif": exc.detail}) from None
            if ta[0] > t[0] or ta[-1] < t[-1]:
                raise serializers.ValidationError(
                    {"aif": ["the AIF's times must cover the tissue curve's (from its first to its last sample)"]}
                )
            aif = fitting.Aif(ta, ca)
        if not np.any(ct):
            raise serializers.ValidationError({"ct": ["the tissue curve is zero throughout: nothing to fit"]})
        if not np.any(aif.ca):
            raise serializers.ValidationError({"aif": ["the arterial input is zero throughout"]})
        data["_t"], data["_ct"], data["_aif"] = t, ct, aif
        return data


CurveFitAnswer = inline_serializer(
    "DceCurveFit",
    {
        "model": serializers.ChoiceField(choices=list(fitting.MODELS)),
        **{name: serializers.FloatField(allow_null=True, help_text=unit) for name, unit in fitting.UNITS.items()},
        "uncertainties": serializers.DictField(child=serializers.FloatField(), help_text="standard errors"),
        "units": serializers.DictField(child=serializers.CharField()),
        "residual": inline_serializer(
            "DceCurveFitResidual",
            {"rmse_mM": serializers.FloatField(), "r_squared": serializers.FloatField()},
        ),
        "fitted_ct": serializers.ListField(child=serializers.FloatField(), help_text="the model curve at t, mM"),
    },
)


class CurveFit(APIView):
    """Fit a pharmacokinetic model to a tissue concentration curve."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        request=CurveFitInput,
        responses={200: CurveFitAnswer},
        tags=["analysis"],
        operation_id="analysis_dce_curve_fit",
        description=(
            "Tofts, extended Tofts, Patlak or two-compartment exchange fit of `ct` (mM) at `t` (s) "
            "to a measured arterial plasma input or Parker's population AIF. Answers the parameters in "
            "the units named in `units`, their standard errors and the fit's residual."
        ),
    )
    def post(self, request: Request) -> Response:
        v = _validated(CurveFitInput, request)
        try:
            fit = fitting.fit_curve(v["_t"], v["_ct"], v["_aif"], v["model"], fit_delay=v["fit_delay"])
        except fitting.FitError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        answer = fit.as_json()
        institution = current_institution(request)
        audit.record(
            "analysis.dce.curve_fit",
            request=request,
            institution=institution,
            object_type="dce_curve",
            detail={
                "model": v["model"],
                "points": len(v["_t"]),
                "fit_delay": v["fit_delay"],
                "aif": "population" if "population" in v["aif"] else "measured",
                "ktrans_per_min": answer["ktrans_per_min"],
                "r_squared": answer["residual"]["r_squared"],
            },
        )
        return Response(answer)


class EnhancementInput(serializers.Serializer):
    t = serializers.ListField(child=serializers.FloatField(), max_length=MAX_POINTS, help_text="seconds")
    signal = serializers.ListField(child=serializers.FloatField(), max_length=MAX_POINTS, help_text="signal intensity")
    baseline_points = serializers.IntegerField(
        required=False, min_value=1, help_text="pre-contrast samples (found from the curve when not given)"
    )
    concentration = serializers.ListField(
        child=serializers.FloatField(),
        required=False,
        max_length=MAX_POINTS,
        help_text="concentration at t, mM: iAUC60 is then in mM·s",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        t = _finite_list("t", data["t"])
        signal = _finite_list("signal", data["signal"])
        if len(t) != len(signal):
            raise serializers.ValidationError(
                {"signal": [f"t and signal differ in length ({len(t)} and {len(signal)})"]}
            )
        if len(t) < 3:
            raise serializers.ValidationError({"t": ["a curve needs at least 3 samples"]})
        _check_times("t", t)
        if np.any(signal < 0):
            raise serializers.ValidationError({"signal": ["signal intensities are never negative"]})
        if data.get("baseline_points", 1) >= len(t):
            raise serializers.ValidationError({"baseline_points": ["the baseline must leave post-contrast samples"]})
        concentration = None
        if "concentration" in data:
            concentration = _finite_list("concentration", data["concentration"])
            if len(concentration) != len(t):
                raise serializers.ValidationError({"concentration": ["t and concentration differ in length"]})
        data["_t"], data["_signal"], data["_concentration"] = t, signal, concentration
        return data


EnhancementAnswer = inline_serializer(
    "DceEnhancement",
    {
        "baseline": serializers.FloatField(),
        "onset_s": serializers.FloatField(allow_null=True),
        "initial_slope_percent_per_min": serializers.FloatField(allow_null=True),
        "max_enhancement_ratio_percent": serializers.FloatField(),
        "peak_time_s": serializers.FloatField(),
        "time_to_peak_s": serializers.FloatField(allow_null=True),
        "washout_rate_percent_per_min": serializers.FloatField(allow_null=True),
        "signal_enhancement_ratio": serializers.FloatField(allow_null=True),
        "iauc60": serializers.FloatField(allow_null=True, help_text="mM·s with a concentration, else s"),
        "curve_type": serializers.ChoiceField(choices=["I", "II", "III"], allow_null=True),
        "curve_type_label": serializers.CharField(allow_null=True),
    },
)


class EnhancementCurve(APIView):
    """Semi-quantitative description of a time–intensity curve."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        request=EnhancementInput,
        responses={200: EnhancementAnswer},
        tags=["analysis"],
        operation_id="analysis_dce_enhancement",
        description=(
            "Onset, initial slope, maximum enhancement ratio, time to peak, wash-out rate, signal "
            "enhancement ratio, iAUC60 and curve type (I persistent, II plateau, III wash-out) of a "
            "time–intensity curve."
        ),
    )
    def post(self, request: Request) -> Response:
        v = _validated(EnhancementInput, request)
        result = enhancement.analyse(
            v["_t"], v["_signal"], baseline=v.get("baseline_points"), concentration=v["_concentration"]
        ).as_json()
        audit.record(
            "analysis.dce.enhancement",
            request=request,
            institution=current_institution(request),
            object_type="dce_curve",
            detail={"points": len(v["_t"]), "curve_type": result["curve_type"]},
        )
        return Response(result)


# Map jobs ------------------------------------------------------------------------------


class RegionSerializer(serializers.Serializer):
    slice = serializers.IntegerField(min_value=0, help_text="slice index in the dynamic series, 0 = first")
    polygon = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2),
        required=False,
        max_length=2000,
        help_text="[[x, y], …] in pixels (x = column, y = row); none: the whole slice",
    )

    def validate_polygon(self, value: list) -> list:
        if value and len(value) < 3:
            raise serializers.ValidationError("a polygon needs at least 3 points")
        return value


class MapJobInput(serializers.Serializer):
    study = serializers.UUIDField()
    series = serializers.ListField(
        child=serializers.UUIDField(),
        min_length=1,
        max_length=500,
        help_text="the dynamic series, or one series per time point",
    )
    mask = serializers.ListField(child=RegionSerializer(), min_length=1, max_length=500)
    model = serializers.ChoiceField(choices=list(maps.MAP_MODELS), default="tofts")
    aif = serializers.DictField(
        default=dict,
        help_text="{'population': 'parker', 'bolus_arrival_s': s} (default: Parker, arrival found from the curve) "
        "or {'region': {'slice': k, 'polygon': [[x, y], …]}} drawn on an artery",
    )
    t1_ms = serializers.FloatField(required=False, min_value=50, max_value=5000, help_text="pre-contrast tissue T1")
    relaxivity = serializers.FloatField(required=False, min_value=0.5, max_value=50, help_text="r1, /mM/s")
    hematocrit = serializers.FloatField(required=False, min_value=0.0, max_value=0.9)
    baseline_points = serializers.IntegerField(required=False, min_value=1)

    def validate_aif(self, value: dict) -> dict:
        if not value:
            return {"population": "parker"}
        if "region" in value:
            region = RegionSerializer(data=value["region"])
            region.is_valid(raise_exception=True)
            return {"region": dict(region.validated_data)}
        if value.get("population") != "parker":
            raise serializers.ValidationError("the AIF is {'population': 'parker'} or {'region': {...}}")
        answer: dict = {"population": "parker"}
        if "bolus_arrival_s" in value:
            try:
                answer["bolus_arrival_s"] = float(value["bolus_arrival_s"])
            except (TypeError, ValueError):
                raise serializers.ValidationError("bolus_arrival_s is a number of seconds") from None
        return answer


class MapJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = DceMapJob
        fields = [
            "id",
            "study",
            "series",
            "model",
            "aif",
            "options",
            "state",
            "progress",
            "cancel_requested",
            "error",
            "results",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


def _refusal(field: str, message: str) -> Response:
    return Response({field: [message]}, status=status.HTTP_400_BAD_REQUEST)


def _series_of_study(study: Study, series_ids: list[UUID]) -> list[Series] | None:
    """The study's series with these ids; None when any id is not one of them."""
    rows = list(Series.objects.filter(study=study, pk__in=series_ids))
    return rows if len(rows) == len(set(series_ids)) else None


class MapJobList(APIView):
    """Start voxel-wise pharmacokinetic maps of a dynamic series; list a study's jobs."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        request=MapJobInput,
        responses={202: MapJobSerializer},
        tags=["analysis"],
        operation_id="analysis_dce_maps_start",
        description=(
            "Queue maps of Ktrans, ve, kep (and vp, iAUC60) inside the mask. Follow `progress` at "
            "`/api/v1/analysis/dce/{id}/`; each map is stored in the study as a DICOM Parametric Map."
        ),
    )
    def post(self, request: Request) -> Response:
        v = _validated(MapJobInput, request)
        study = access_study(request.user, pk=v["study"])
        series_rows = _series_of_study(study, v["series"])
        if series_rows is None:
            return _refusal("series", "every series must belong to the study")
        options = {k: v[k] for k in ("t1_ms", "relaxivity", "hematocrit", "baseline_points") if k in v}
        job = actions.do_start_dce_map_job(
            acting_user=request.user,
            study=study,
            series=series_rows,
            mask={"regions": [dict(r) for r in v["mask"]]},
            model=v["model"],
            aif=v["aif"],
            options=options,
        )
        job.refresh_from_db()
        return Response(MapJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class MapJobDetail(APIView):
    permission_classes = [HasClinicalRole]

    @extend_schema(responses={200: MapJobSerializer}, tags=["analysis"], operation_id="analysis_dce_maps_read")
    def get(self, request: Request, job_id: str) -> Response:
        return Response(MapJobSerializer(access_map_job(request.user, job_id)).data)


class MapJobCancel(APIView):
    permission_classes = [HasClinicalRole]

    @extend_schema(
        request=None, responses={200: MapJobSerializer}, tags=["analysis"], operation_id="analysis_dce_maps_cancel"
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = actions.do_cancel_dce_map_job(access_map_job(request.user, job_id), acting_user=request.user)
        return Response(MapJobSerializer(job).data)


# Regions and map slices ------------------------------------------------------------------


class RegionInput(serializers.Serializer):
    study = serializers.UUIDField()
    series = serializers.ListField(child=serializers.UUIDField(), min_length=1, max_length=500)
    region = RegionSerializer()
    label = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")
    aif = serializers.DictField(default=dict)
    t1_ms = serializers.FloatField(required=False, min_value=50, max_value=5000)
    relaxivity = serializers.FloatField(required=False, min_value=0.5, max_value=50)
    hematocrit = serializers.FloatField(required=False, min_value=0.0, max_value=0.9)

    validate_aif = MapJobInput.validate_aif


class RegionSerializerOut(serializers.ModelSerializer):
    class Meta:
        model = DceRegionAnalysis
        fields = ["id", "study", "series", "region", "label", "results", "created_at"]
        read_only_fields = fields


class RegionList(APIView):
    """Analyse a region drawn on a dynamic series (kept for the report); list a study's regions."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        parameters=[OpenApiParameter("study", OpenApiTypes.UUID, required=True)],
        responses={200: RegionSerializerOut(many=True)},
        tags=["analysis"],
        operation_id="analysis_dce_regions_list",
    )
    def get(self, request: Request) -> Response:
        try:
            study_id = UUID(request.query_params.get("study", ""))
        except ValueError:
            return _refusal("study", "give the study's id: ?study=<uuid>")
        study = access_study(request.user, pk=study_id)
        rows = DceRegionAnalysis.objects.filter(study=study)
        return Response({"results": RegionSerializerOut(rows, many=True).data})

    @extend_schema(
        request=RegionInput,
        responses={201: RegionSerializerOut},
        tags=["analysis"],
        operation_id="analysis_dce_regions_analyse",
        description="The region's time–intensity and concentration curves, the AIF, enhancement descriptors "
        "with the curve type, and a Tofts fit.",
    )
    def post(self, request: Request) -> Response:
        v = _validated(RegionInput, request)
        study = access_study(request.user, pk=v["study"])
        series_rows = _series_of_study(study, v["series"])
        if series_rows is None:
            return _refusal("series", "every series must belong to the study")
        options = {k: v[k] for k in ("t1_ms", "relaxivity", "hematocrit") if k in v}
        region_spec = dict(v["region"])
        try:
            results = analyse_region(study.institution_id, series_rows, region_spec, v["aif"], options)
        except (JobError, NotDynamic) as exc:
            return _refusal("series" if isinstance(exc, NotDynamic) else "region", str(exc))
        row = actions.do_record_dce_region(
            acting_user=request.user,
            study=study,
            series=series_rows,
            region=region_spec,
            label=v["label"],
            results=results,
        )
        return Response(RegionSerializerOut(row).data, status=status.HTTP_201_CREATED)


class MapSlice(APIView):
    """One slice of a finished job's map, as numbers, read back from the archived Parametric Map."""

    permission_classes = [HasClinicalRole]

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["analysis"], operation_id="analysis_dce_map_slice")
    def get(self, request: Request, job_id: str, name: str, index: int) -> Response:
        job = access_map_job(request.user, job_id)
        stored = (job.results.get("maps") or {}).get(name)
        if job.state != DceMapJob.State.DONE or stored is None:
            raise Http404("No such map")
        instance = get_object_or_404(Instance, pk=stored["instance"], series__study=job.study)
        values = parametric.slices_in_source_order(load_dataset(instance))
        if not 0 <= index < values.shape[0]:
            raise Http404("No such slice")
        plane = values[index]
        return Response(
            {
                "name": name,
                "label": stored["label"],
                "unit": stored["unit"],
                "rows": int(plane.shape[0]),
                "columns": int(plane.shape[1]),
                "min": float(plane.min()),
                "max": float(plane.max()),
                "values": [float(f"{v:.4g}") for v in plane.ravel().tolist()],
            }
        )


RegionKeyImageAnswer = inline_serializer(
    "DceRegionKeyImage",
    {
        "key_image": serializers.UUIDField(),
        "instance": serializers.UUIDField(),
        "study_instance_uid": serializers.CharField(),
        "series_instance_uid": serializers.CharField(),
        "sop_instance_uid": serializers.CharField(),
    },
)


class RegionKeyImage(APIView):
    """Save a region's plotted curve (with the AIF) into the study as a key image (a Secondary Capture)."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        request=None,
        responses={201: RegionKeyImageAnswer},
        tags=["analysis"],
        operation_id="analysis_dce_region_key_image",
    )
    def post(self, request: Request, region_id: str) -> Response:
        region = access_region(request.user, region_id)
        key_image = actions.do_save_dce_curve_key_image(region, acting_user=request.user)
        instance = key_image.instance
        return Response(
            {
                "key_image": str(key_image.pk),
                "instance": str(instance.pk),
                "study_instance_uid": region.study.study_instance_uid,
                "series_instance_uid": instance.series.series_instance_uid,
                "sop_instance_uid": instance.sop_instance_uid,
            },
            status=status.HTTP_201_CREATED,
        )


# Parametric Maps over the anatomy in the viewer ---------------------------------------------


ParametricMapItems = inline_serializer(
    "ParametricMapItem",
    many=True,
    fields={
        "id": serializers.UUIDField(),
        "series": serializers.UUIDField(),
        "label": serializers.CharField(),
        "unit": serializers.CharField(),
        "description": serializers.CharField(),
        "frame_of_reference_uid": serializers.CharField(),
    },
)
ParametricMapListAnswer = inline_serializer("ParametricMapList", {"results": ParametricMapItems})

ParametricMapPlane = inline_serializer(
    "ParametricMapPlane",
    {
        "map": serializers.UUIDField(),
        "frame": serializers.IntegerField(help_text="the map's frame shown, 1-based"),
        "label": serializers.CharField(),
        "unit": serializers.CharField(),
        "rows": serializers.IntegerField(),
        "columns": serializers.IntegerField(),
        "min": serializers.FloatField(),
        "max": serializers.FloatField(),
        "values": serializers.ListField(child=serializers.FloatField(), help_text="row by row"),
    },
)


def _study_from_query(request: Request) -> Study:
    try:
        study_id = UUID(request.query_params.get("study", ""))
    except ValueError:
        raise serializers.ValidationError({"study": ["give the study's id: ?study=<uuid>"]}) from None
    return access_study(request.user, pk=study_id)


class ParametricMapList(APIView):
    """The Parametric Maps stored in a study (the viewer offers them as overlays)."""

    permission_classes = [HasClinicalRole]

    @extend_schema(
        parameters=[OpenApiParameter("study", OpenApiTypes.UUID, required=True)],
        responses={200: ParametricMapListAnswer},
        tags=["analysis"],
        operation_id="analysis_parametric_maps_list",
    )
    def get(self, request: Request) -> Response:
        study = _study_from_query(request)
        rows = Instance.objects.filter(series__study=study, sop_class_uid=parametric.PARAMETRIC_MAP_STORAGE).order_by(
            "series__series_number", "received_at"
        )
        return Response(
            {
                "results": [
                    {"id": str(row.pk), "series": str(row.series_id), **parametric.map_description(row.metadata)}
                    for row in rows
                ]
            }
        )


class ParametricMapValues(APIView):
    """The values of a Parametric Map on one image of the same study (the plane lying on it), for the overlay.

    Without ``over``, the map's own frame ``frame``.
    """

    permission_classes = [HasClinicalRole]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "over", OpenApiTypes.UUID, description="the image shown (instance id); none: the map's own frame"
            ),
            OpenApiParameter(
                "frame", OpenApiTypes.INT, description="the image's (or map's) frame, 1-based (default 1)"
            ),
        ],
        responses={200: ParametricMapPlane},
        tags=["analysis"],
        operation_id="analysis_parametric_map_values",
    )
    def get(self, request: Request, map_id: UUID) -> Response:
        pm = get_object_or_404(
            Instance.objects.select_related("series__study__patient"),
            pk=map_id,
            sop_class_uid=parametric.PARAMETRIC_MAP_STORAGE,
            series__study__in=visible_studies(request.user),
        )
        try:
            frame = int(request.query_params.get("frame", "1"))
            over = UUID(request.query_params["over"]) if "over" in request.query_params else None
        except ValueError:
            return _refusal("over", "give the image shown: ?over=<instance id>&frame=<n>")
        if over is None:  # the map's own frame
            if not 1 <= frame <= max(pm.number_of_frames, 1):
                raise Http404("No such frame")
            index = frame - 1
        else:
            image = get_object_or_404(Instance, pk=over, series__study=pm.series.study)
            if not 1 <= frame <= max(image.number_of_frames, 1):
                return _refusal("frame", f"the image has {image.number_of_frames} frames")
            found = parametric.frame_over(pm.metadata, image.metadata, frame - 1)
            if found is None:
                raise Http404("The map has no plane on this image")
            index = found
        ds = load_dataset(pm)
        values = ds.pixel_array
        plane = (values if values.ndim == 3 else values[None])[index]
        described = parametric.map_description(pm.metadata)
        study = pm.series.study
        audit.record(
            "analysis.parametric_map.read",
            request=request,
            institution=study.institution_id,
            object_type="instance",
            object_id=pm.pk,
            patient_id=study.patient.patient_id,
            detail={"study": str(study.pk), "over": str(over or ""), "frame": index + 1},
        )
        return Response(
            {
                "map": str(pm.pk),
                "frame": index + 1,
                "label": described["label"],
                "unit": described["unit"],
                "rows": int(plane.shape[0]),
                "columns": int(plane.shape[1]),
                "min": float(plane.min()),
                "max": float(plane.max()),
                "values": [float(f"{v:.4g}") for v in plane.ravel().tolist()],
            }
        )
