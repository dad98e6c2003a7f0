"""REST representations of orders, the catalogue and the reconciliation queue."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import serializers

from archive.models import Patient
from pacs_cloud.lib.person_names import display_name

from .models import Order, Procedure, ReconciliationItem, Station


class AwareDateTimeField(serializers.DateTimeField):
    """A date-time that must state its UTC offset: a bare local time is ambiguous across sites."""

    def enforce_timezone(self, value: Any) -> Any:
        if timezone.is_naive(value):
            raise serializers.ValidationError("Give the time with its UTC offset, e.g. 2030-01-01T10:00:00+08:00.")
        return super().enforce_timezone(value)


class OrderPatientSerializer(serializers.ModelSerializer):
    name = serializers.CharField(
        help_text="DICOM PN: alphabetic=ideographic=phonetic groups, components separated by ^, "
        "e.g. WANG^XIAOMING=王^小明"
    )
    display_name = serializers.SerializerMethodField(help_text="The name as shown: 王小明 (WANG, XIAOMING)")

    class Meta:
        model = Patient
        fields = ["id", "patient_id", "issuer", "name", "display_name", "birth_date", "sex"]

    def get_display_name(self, patient: Patient) -> str:
        return display_name(patient.name)


class ProcedureSerializer(serializers.ModelSerializer):
    class Meta:
        model = Procedure
        fields = ["id", "institution", "code", "coding_scheme", "name", "modality", "body_part", "duration_minutes"]


class StationSerializer(serializers.ModelSerializer):
    ae_title = serializers.CharField(source="node.ae_title", read_only=True)

    class Meta:
        model = Station
        fields = ["id", "institution", "name", "modality", "ae_title", "location"]


class OrderSerializer(serializers.ModelSerializer):
    patient = OrderPatientSerializer(read_only=True)
    procedure = ProcedureSerializer(read_only=True)
    station = StationSerializer(read_only=True)
    study = serializers.UUIDField(source="study_id", read_only=True, allow_null=True)

    class Meta:
        model = Order
        fields = [
            "id",
            "institution",
            "accession_number",
            "requested_procedure_id",
            "sps_id",
            "study_instance_uid",
            "state",
            "priority",
            "patient",
            "procedure",
            "station",
            "scheduled_at",
            "referring_physician",
            "clinical_info",
            "cancel_reason",
            "study",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class NewPatientSerializer(serializers.Serializer):
    """The patient of a new order: an existing one by ``id`` or ``patient_id``, else registered."""

    id = serializers.UUIDField(required=False)
    patient_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    name = serializers.CharField(required=False, allow_blank=True, max_length=324)
    birth_date = serializers.DateField(required=False, allow_null=True)
    sex = serializers.ChoiceField(choices=["", "M", "F", "O"], required=False, default="")
    allow_possible_duplicate = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("id") and not attrs.get("patient_id") and not attrs.get("name"):
            raise serializers.ValidationError("Give the patient's id, patient_id, or a name to register them.")
        return attrs


class OrderCreateSerializer(serializers.Serializer):
    institution = serializers.UUIDField(required=False, help_text="Needed when you work at several institutions")
    patient = NewPatientSerializer()
    procedure = serializers.UUIDField()
    station = serializers.UUIDField()
    scheduled_at = AwareDateTimeField(help_text="ISO 8601 with a UTC offset")
    priority = serializers.ChoiceField(choices=Order.Priority.choices, default=Order.Priority.ROUTINE)
    referring_physician = serializers.CharField(required=False, allow_blank=True, default="", max_length=324)
    clinical_info = serializers.CharField(required=False, allow_blank=True, default="")


class OrderEditSerializer(serializers.Serializer):
    procedure = serializers.UUIDField(required=False)
    station = serializers.UUIDField(required=False)
    scheduled_at = AwareDateTimeField(required=False)
    priority = serializers.ChoiceField(choices=Order.Priority.choices, required=False)
    referring_physician = serializers.CharField(required=False, allow_blank=True, max_length=324)
    clinical_info = serializers.CharField(required=False, allow_blank=True)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=1000)


class ReconciliationItemSerializer(serializers.ModelSerializer):
    study = serializers.SerializerMethodField()

    class Meta:
        model = ReconciliationItem
        fields = ["id", "institution", "study", "created_at", "resolution", "resolved_at", "note"]
        read_only_fields = fields

    def get_study(self, item: ReconciliationItem) -> dict[str, Any]:
        study = item.study
        return {
            "id": str(study.pk),
            "study_instance_uid": study.study_instance_uid,
            "accession_number": study.accession_number,
            "study_date": study.study_date,
            "description": study.description,
            "modalities": study.modalities,
            "patient": OrderPatientSerializer(study.patient).data,
        }


class LinkSerializer(serializers.Serializer):
    order = serializers.UUIDField()


class DismissSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=1000)


class CorrectPatientSerializer(serializers.Serializer):
    """The patient a queued study should have been received under."""

    name = serializers.CharField(max_length=324, help_text="DICOM PN, e.g. WANG^XIAOMING=王^小明")
    patient_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    birth_date = serializers.DateField(required=False, allow_null=True, default=None)
    sex = serializers.ChoiceField(choices=["", "M", "F", "O"], required=False, default="")
