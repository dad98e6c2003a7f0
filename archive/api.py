"""The archive's REST resources under ``/api/v1/``: studies, DICOM nodes, ingest conflicts."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from pacs_cloud import access, audit
from pacs_cloud.access import HasClinicalRole, IsInstitutionAdmin
from pacs_cloud.lib.person_names import display_name
from pacs_cloud.models import Institution, Role

from . import actions
from .access import access_study, searchable_studies
from .dicomweb import audit_study_read
from .models import DicomNode, IngestConflict, Series, Study


@extend_schema_serializer(component_name="StudyPatient")
class PatientSerializer(serializers.Serializer):
    patient_id = serializers.CharField()
    issuer = serializers.SerializerMethodField()
    name = serializers.CharField()
    display_name = serializers.SerializerMethodField(help_text="The name as shown: 张三 (ZHANG, SAN)")
    birth_date = serializers.DateField(allow_null=True)
    sex = serializers.CharField()

    def get_issuer(self, patient: Any) -> str:
        return "" if patient.issuer.startswith("no-patient-id:") else patient.issuer

    def get_display_name(self, patient: Any) -> str:
        return display_name(patient.name)


@extend_schema_serializer(component_name="Patient")
class PatientRefSerializer(serializers.Serializer):
    """A patient as other resources show one (a reading task's, a referral's): demographics, no issuer."""

    name = serializers.CharField(help_text="The DICOM PN value")
    display_name = serializers.SerializerMethodField(help_text="The name as shown: 张三 (ZHANG, SAN)")
    patient_id = serializers.CharField()
    birth_date = serializers.DateField(allow_null=True)
    sex = serializers.CharField()

    def get_display_name(self, patient: Any) -> str:
        return display_name(patient["name"] if isinstance(patient, dict) else patient.name)


class SeriesSerializer(serializers.ModelSerializer):
    class Meta:
        model = Series
        fields = [
            "id",
            "series_instance_uid",
            "modality",
            "series_number",
            "description",
            "body_part",
            "num_instances",
            "size_bytes",
        ]


class StudySerializer(serializers.ModelSerializer):
    institution = serializers.SerializerMethodField()
    patient = PatientSerializer()
    # As DICOM counts them (every stored object, the archived report included) ...
    modalities = serializers.SerializerMethodField()
    # ... and as the pages do: images only; the report is the report.
    image_modalities = serializers.ListField(child=serializers.CharField(), read_only=True)
    image_series = serializers.IntegerField(read_only=True)
    image_instances = serializers.IntegerField(read_only=True)
    has_report_document = serializers.BooleanField(read_only=True)
    dicomweb_url = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id",
            "study_instance_uid",
            "institution",
            "patient",
            "study_date",
            "study_time",
            "accession_number",
            "study_id",
            "description",
            "referring_physician",
            "modalities",
            "num_series",
            "num_instances",
            "image_modalities",
            "image_series",
            "image_instances",
            "has_report_document",
            "size_bytes",
            "state",
            "received_at",
            "last_instance_at",
            "completed_at",
            "dicomweb_url",
        ]

    def get_institution(self, study: Study) -> dict[str, str]:
        return {"id": str(study.institution_id), "name": study.institution.name}

    def get_modalities(self, study: Study) -> list[str]:
        return [m for m in study.modalities.split("\\") if m]

    def get_dicomweb_url(self, study: Study) -> str:
        from .dicomweb import dicomweb_base

        return f"{dicomweb_base()}/studies/{study.study_instance_uid}"


class StudyDetailSerializer(StudySerializer):
    series = SeriesSerializer(many=True, read_only=True)

    class Meta(StudySerializer.Meta):
        fields = [*StudySerializer.Meta.fields, "series"]


@extend_schema(
    parameters=[
        OpenApiParameter("patient_id", str, description="Patient ID, exact"),
        OpenApiParameter("patient_name", str, description="Patient name; * and ? wildcards, any script"),
        OpenApiParameter("accession_number", str),
        OpenApiParameter("modality", str),
        OpenApiParameter("state", str, enum=[s.value for s in Study.State]),
        OpenApiParameter("date_from", str, description="YYYY-MM-DD"),
        OpenApiParameter("date_to", str, description="YYYY-MM-DD"),
    ]
)
class StudyViewSet(viewsets.ReadOnlyModelViewSet):
    """Studies the caller may see (their institutions' and those shared with them), newest first."""

    permission_classes = [HasClinicalRole]
    lookup_field = "pk"

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return StudyDetailSerializer if self.action == "retrieve" else StudySerializer

    def get_queryset(self) -> QuerySet[Study]:
        qs = searchable_studies(self.request.user).select_related("patient", "institution")
        if self.action == "retrieve":
            return qs.prefetch_related("series")
        params = self.request.query_params
        if params.get("patient_id"):
            qs = qs.filter(patient__patient_id=params["patient_id"])
        if params.get("accession_number"):
            qs = qs.filter(accession_number=params["accession_number"])
        if params.get("state"):
            qs = qs.filter(state=params["state"])
        if params.get("modality"):
            from .query import _modalities_q

            qs = qs.filter(_modalities_q("modalities", params["modality"]))
        if params.get("patient_name"):
            from .query import _pn_q

            qs = qs.filter(_pn_q("patient__", params["patient_name"], fuzzy="*" not in params["patient_name"]))
        for name, lookup in (("date_from", "study_date__gte"), ("date_to", "study_date__lte")):
            if params.get(name):
                try:
                    qs = qs.filter(**{lookup: serializers.DateField().to_internal_value(params[name])})
                except serializers.ValidationError as exc:
                    raise ValidationError({name: exc.detail}) from None
        return qs.order_by("-study_date", "-study_time", "-received_at", "pk")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        results = response.data.get("results", []) if isinstance(response.data, dict) else response.data
        audit.record(
            "archive.study.list",
            request=request._request,
            actor=request.user,
            object_type="archive.study",
            detail={"results": len(results), "studies": [r["id"] for r in results][:100]},
        )
        return response

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        study = access_study(request.user, pk=kwargs["pk"])
        study = self.get_queryset().get(pk=study.pk)
        audit_study_read(request, "archive.study.view", study)
        return Response(self.get_serializer(study).data)


# DICOM nodes ----------------------------------------------------------------------


class DicomNodeSerializer(serializers.ModelSerializer):
    institution = serializers.PrimaryKeyRelatedField(queryset=Institution.objects.all())

    class Meta:
        model = DicomNode
        fields = ["id", "institution", "ae_title", "host", "port", "description", "is_active"]

    def validate_ae_title(self, value: str) -> str:
        value = value.strip()
        # PS3.5 §6.2: AE titles are up to 16 characters of the default repertoire, no backslash.
        if not value or len(value) > 16 or not value.isascii() or "\\" in value or not value.isprintable():
            raise serializers.ValidationError("An AE title is 1 to 16 printable ASCII characters, no backslash.")
        clash = DicomNode.objects.filter(ae_title=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError("This AE title is already configured.")
        return value

    def validate_institution(self, value: Institution) -> Institution:
        user = self.context["request"].user
        if value.pk not in access.institution_ids(user, [Role.INSTITUTION_ADMIN]):
            raise serializers.ValidationError("You administer no such institution.")
        return value


class DicomNodeViewSet(viewsets.ModelViewSet):
    """DICOM nodes (modalities, PACS, workstations) of the institutions the caller administers."""

    serializer_class = DicomNodeSerializer
    permission_classes = [IsInstitutionAdmin]

    def get_queryset(self) -> QuerySet[DicomNode]:
        ids = access.institution_ids(self.request.user, [Role.INSTITUTION_ADMIN])
        return DicomNode.objects.filter(institution_id__in=ids).order_by("ae_title")

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = actions.do_save_dicom_node(
            institution=data["institution"],
            acting_user=self.request.user,
            ae_title=data["ae_title"],
            host=data.get("host", ""),
            port=data.get("port"),
            description=data.get("description", ""),
            is_active=data.get("is_active", True),
        )

    def perform_update(self, serializer: Any) -> None:
        node = serializer.instance
        data = {**DicomNodeSerializer(node).data, **serializer.validated_data}
        serializer.instance = actions.do_save_dicom_node(
            institution=data["institution"] if isinstance(data["institution"], Institution) else node.institution,
            acting_user=self.request.user,
            node=node,
            ae_title=data["ae_title"],
            host=data.get("host") or "",
            port=data.get("port"),
            description=data.get("description") or "",
            is_active=data.get("is_active", True),
        )

    def perform_destroy(self, instance: DicomNode) -> None:
        actions.do_delete_dicom_node(instance, acting_user=self.request.user)


# Ingest conflicts ---------------------------------------------------------------------


class IngestConflictSerializer(serializers.ModelSerializer):
    class Meta:
        model = IngestConflict
        fields = [
            "id",
            "institution",
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "transfer_syntax_uid",
            "sha256",
            "size",
            "source",
            "reason",
            "status",
            "received_at",
            "resolved_at",
        ]


class IngestConflictViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Objects kept aside for review: their SOP Instance UID is archived with other content, or
    they were refused for what they say (``reason``)."""

    serializer_class = IngestConflictSerializer
    permission_classes = [IsInstitutionAdmin]

    def get_queryset(self) -> QuerySet[IngestConflict]:
        ids = access.institution_ids(self.request.user, [Role.INSTITUTION_ADMIN])
        qs = IngestConflict.objects.filter(institution_id__in=ids)
        if self.request.query_params.get("status"):
            qs = qs.filter(status=self.request.query_params["status"])
        return qs

    @extend_schema(
        request=inline_serializer("ResolveConflict", {"keep": serializers.ChoiceField(["existing", "new"])}),
        responses=IngestConflictSerializer,
    )
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str | None = None) -> Response:
        conflict = get_object_or_404(self.get_queryset(), pk=pk)
        keep = str(request.data.get("keep", ""))
        if keep not in ("existing", "new"):
            return Response({"keep": ["Choose 'existing' or 'new'."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            resolved = actions.do_resolve_conflict(conflict, keep=keep, acting_user=request.user)
        except ValueError as exc:
            return Response({"keep": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(IngestConflictSerializer(resolved).data)
