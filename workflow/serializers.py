"""REST representations of reading tasks, pools, agreements and routing policies.

A reading task is shown in two shapes by one serializer: everyone it is
visible to gets what is needed to choose it; ``patient`` and ``study`` are
filled only for those who may open the study (``access.can_see_patient``) and
are ``null`` otherwise.
"""

from __future__ import annotations

from typing import Any

from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from archive.api import PatientRefSerializer
from pacs_cloud.api import InstitutionRefSerializer
from pacs_cloud.lib.person_names import display_name
from pacs_cloud.models import Institution, User

from . import access
from .models import PoolMember, Priority, RadiologistPool, ReadingAgreement, ReadingTask, RoutingPolicy


def viewer_url(study_id: Any) -> str | None:
    """The study in the viewer, once the viewer app provides ``viewer-open-study``."""
    try:
        return reverse("viewer-open-study", args=[study_id])
    except NoReverseMatch:
        return None


class StudyRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    study_instance_uid = serializers.CharField()
    accession_number = serializers.CharField()
    description = serializers.CharField()
    study_date = serializers.DateField(allow_null=True)
    viewer_url = serializers.CharField(allow_null=True)


class ReadingTaskSerializer(serializers.ModelSerializer):
    hospital = serializers.SerializerMethodField()
    sla_remaining_seconds = serializers.SerializerMethodField()
    breached = serializers.SerializerMethodField()
    claimed_by = serializers.SerializerMethodField()
    patient = serializers.SerializerMethodField()
    study = serializers.SerializerMethodField()

    class Meta:
        model = ReadingTask
        fields = [
            "id",
            "kind",
            "state",
            "hospital",
            "modality",
            "body_part",
            "procedure_code",
            "procedure",
            "priority",
            "clinical_question",
            "offered_at",
            "due_at",
            "sla_minutes",
            "sla_remaining_seconds",
            "escalation_level",
            "breached",
            "claimed_by",
            "claimed_at",
            "finished_at",
            "patient",
            "study",
        ]
        read_only_fields = fields

    def _sees_patient(self, task: ReadingTask) -> bool:
        request = self.context.get("request")
        clinical = self.context.get("clinical_ids")
        return request is not None and access.can_see_patient(request.user, task, clinical)

    @extend_schema_field(InstitutionRefSerializer)
    def get_hospital(self, task: ReadingTask) -> dict[str, Any]:
        return {"id": task.institution_id, "name": task.institution.name}

    def get_sla_remaining_seconds(self, task: ReadingTask) -> int | None:
        if task.due_at is None or task.state in (ReadingTask.State.FINAL, ReadingTask.State.CANCELLED):
            return None
        return int((task.due_at - timezone.now()).total_seconds())

    def get_breached(self, task: ReadingTask) -> bool:
        return task.breached_at is not None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_claimed_by(self, task: ReadingTask) -> str | None:
        return task.claimed_by.username if task.claimed_by_id and task.claimed_by else None

    @extend_schema_field(PatientRefSerializer(allow_null=True))
    def get_patient(self, task: ReadingTask) -> dict[str, Any] | None:
        if not self._sees_patient(task):
            return None
        patient = task.study.patient
        return {
            "name": patient.name,
            "display_name": display_name(patient.name),  # returned as is: this dict is the response
            "patient_id": patient.patient_id,
            "birth_date": patient.birth_date,
            "sex": patient.sex,
        }

    @extend_schema_field(StudyRefSerializer(allow_null=True))
    def get_study(self, task: ReadingTask) -> dict[str, Any] | None:
        if not self._sees_patient(task):
            return None
        study = task.study
        return {
            "id": study.pk,
            "study_instance_uid": study.study_instance_uid,
            "accession_number": study.accession_number,
            "description": study.description,
            "study_date": study.study_date,
            "viewer_url": viewer_url(study.pk),
        }


class ReassignSerializer(serializers.Serializer):
    user = serializers.CharField(help_text="Username of the radiologist who gets the task.")
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class ReleaseSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class TransitionSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    source = serializers.CharField()
    target = serializers.CharField()
    method = serializers.CharField()
    actor = serializers.CharField()
    reason = serializers.CharField()


# Pools and agreements ----------------------------------------------------------


class PoolMemberSerializer(serializers.ModelSerializer):
    pool = serializers.PrimaryKeyRelatedField(queryset=RadiologistPool.objects.all())
    user = serializers.SlugRelatedField(slug_field="username", queryset=User.objects.filter(is_active=True))
    credentialed_for = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Institution.objects.filter(is_active=True)
    )
    effective_cap = serializers.IntegerField(read_only=True)

    class Meta:
        model = PoolMember
        fields = ["id", "pool", "user", "subspecialties", "credentialed_for", "claim_cap", "effective_cap", "is_active"]
        # Uniqueness, like every rule of a membership, is the write action's (workflow.actions).
        validators: list[Any] = []


class RadiologistPoolSerializer(serializers.ModelSerializer):
    owner = serializers.PrimaryKeyRelatedField(queryset=Institution.objects.filter(is_active=True))
    members = PoolMemberSerializer(many=True, read_only=True)

    class Meta:
        model = RadiologistPool
        fields = ["id", "owner", "name", "description", "claim_cap", "is_active", "members", "created_at"]
        read_only_fields = ["created_at"]
        validators: list[Any] = []


class ReadingAgreementSerializer(serializers.ModelSerializer):
    hospital = serializers.PrimaryKeyRelatedField(queryset=Institution.objects.filter(is_active=True))
    pool = serializers.PrimaryKeyRelatedField(queryset=RadiologistPool.objects.all())
    in_force = serializers.SerializerMethodField()

    class Meta:
        model = ReadingAgreement
        fields = [
            "id",
            "hospital",
            "pool",
            "modalities",
            "body_parts",
            "sla_minutes",
            "valid_from",
            "valid_until",
            "is_active",
            "in_force",
        ]
        validators: list[Any] = []

    def get_in_force(self, agreement: ReadingAgreement) -> bool:
        return agreement.in_force()


# Routing policies ------------------------------------------------------------------


class RoutingPolicySerializer(serializers.ModelSerializer):
    institution = serializers.PrimaryKeyRelatedField(queryset=Institution.objects.filter(is_active=True))
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = RoutingPolicy
        fields = [
            "id",
            "institution",
            "version",
            "name",
            "definition",
            "note",
            "is_current",
            "created_by",
            "created_at",
        ]
        read_only_fields = ["version", "is_current", "created_by", "created_at"]


class FactsSerializer(serializers.Serializer):
    modality = serializers.CharField(required=False, allow_blank=True, default="")
    body_part = serializers.CharField(required=False, allow_blank=True, default="")
    procedure_code = serializers.CharField(required=False, allow_blank=True, default="")
    priority = serializers.ChoiceField(choices=Priority.choices, required=False, default="routine")
    patient_age = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=0, max_value=150)


class DryRunRequestSerializer(serializers.Serializer):
    study = serializers.UUIDField(required=False, help_text="A study of the policy's hospital to route.")
    facts = FactsSerializer(required=False, help_text="Or the facts of an imagined study.")
    at = serializers.DateTimeField(required=False, help_text="When the study completes (default: now).")
    priority = serializers.ChoiceField(choices=Priority.choices, required=False, help_text="Override the priority.")
    definition = serializers.JSONField(required=False, help_text="A draft definition to try instead of the saved one.")
    institution = serializers.UUIDField(required=False, help_text="With a draft definition: whose policy it is.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "study" not in attrs and "facts" not in attrs:
            raise serializers.ValidationError("Give a study or the facts of one.")
        return attrs


class DryRunStepSerializer(serializers.Serializer):
    level = serializers.IntegerField()
    offer_to = serializers.ListField(child=serializers.CharField())
    sla_minutes = serializers.IntegerField()
    offered_at = serializers.DateTimeField()
    due_at = serializers.DateTimeField()


class DryRunResultSerializer(serializers.Serializer):
    facts = serializers.DictField()
    at = serializers.DateTimeField()
    local_time = serializers.DateTimeField()
    matched = serializers.DictField()
    evaluations = serializers.ListField(child=serializers.DictField())
    tasks = serializers.ListField(child=serializers.CharField())
    path = DryRunStepSerializer(many=True)
    notes = serializers.ListField(child=serializers.CharField())
