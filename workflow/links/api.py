"""REST API of patient links: ``/api/v1/patient-links/``, ``/api/v1/link-suggestions/``, ``/api/v1/consents/``.

Referral coordinators link, unlink, confirm and reject suggestions, record
and revoke consents; ``/api/v1/patients/{id}/outside-reads/`` lists, for the
patient's own hospital, who elsewhere opened the patient's studies. Lists
show only what the caller may see.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from archive.api import PatientRefSerializer
from archive.models import Patient
from pacs_cloud import audit
from pacs_cloud.access import HasClinicalRole, IsReferralCoordinator
from pacs_cloud.api import InstitutionRefSerializer
from pacs_cloud.models import Institution

from . import access, actions
from .models import LinkSuggestion, PatientConsent, PatientLink

REFUSAL_STATUS = {"bad_state": status.HTTP_409_CONFLICT, "forbidden": status.HTTP_403_FORBIDDEN, "invalid": 400}
Refusal = inline_serializer("PatientLinkRefusal", {"detail": serializers.CharField(), "code": serializers.CharField()})


def _refused(error: actions.LinkRefused) -> Response:
    return Response({"detail": error.message, "code": error.code}, status=REFUSAL_STATUS.get(error.code, 400))


@extend_schema_serializer(component_name="LinkedPatient")
class LinkedPatientSerializer(PatientRefSerializer):
    """A patient with its institution (either side of a link, a consent's patient)."""

    id = serializers.UUIDField()
    institution = InstitutionRefSerializer()


class PatientLinkSerializer(serializers.ModelSerializer):
    patient = LinkedPatientSerializer(read_only=True)
    other_patient = LinkedPatientSerializer(read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    unlinked_by = serializers.CharField(source="unlinked_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = PatientLink
        fields = [
            "id", "patient", "other_patient", "source", "score", "created_by", "created_at",
            "unlinked_at", "unlinked_by", "unlink_reason",
        ]  # fmt: skip
        read_only_fields = fields


class LinkCreateSerializer(serializers.Serializer):
    patient = serializers.UUIDField(help_text="Your institution's patient.")
    other_patient = serializers.UUIDField(help_text="The other hospital's patient, named in its consent for you.")


class LinkReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)


class PatientLinkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Patients of two hospitals known to be one person (IHE PIX spirit); ``unlink/`` ends a link."""

    serializer_class = PatientLinkSerializer
    permission_classes = [IsReferralCoordinator]

    def get_queryset(self) -> QuerySet[PatientLink]:
        return (
            access.visible_links(self.request.user)
            .select_related("patient__institution", "other_patient__institution", "created_by", "unlinked_by")
            .order_by("-created_at")
        )

    def get_object(self) -> PatientLink:
        return access.access_link(self.request.user, self.kwargs["pk"])

    @extend_schema(request=LinkCreateSerializer, responses={201: PatientLinkSerializer, 400: Refusal, 403: Refusal})
    def create(self, request: Request) -> Response:
        """Link your patient with another hospital's patient whose consent names your institution."""
        body = LinkCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        mine = Patient.objects.filter(
            pk=body.validated_data["patient"], institution_id__in=access.coordinator_institutions(request.user)
        ).first()
        other = Patient.objects.filter(
            pk=body.validated_data["other_patient"],
            consents__receiving_institution_id=getattr(mine, "institution_id", None),
        ).first()
        if mine is None or other is None:
            raise ValidationError({"patient": "No such patients of yours and consented to you."})
        try:
            link = actions.do_link_patients(mine, other, acting_user=request.user, request=request._request)
        except actions.LinkRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(link).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=LinkReasonSerializer, responses={200: PatientLinkSerializer, 403: Refusal})
    @action(detail=True, methods=["post"])
    def unlink(self, request: Request, pk: str | None = None) -> Response:
        """End the link: the linked priors it gave readers are withdrawn at once."""
        link = self.get_object()
        body = LinkReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            link = actions.do_unlink_patients(
                link, acting_user=request.user, reason=body.validated_data["reason"], request=request._request
            )
        except actions.LinkRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(access.access_link(request.user, link.pk)).data)


class LinkSuggestionSerializer(serializers.ModelSerializer):
    patient = LinkedPatientSerializer(read_only=True, help_text="Your institution's patient.")
    candidate = LinkedPatientSerializer(read_only=True, help_text="The consented patient of the other hospital.")
    reasons = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = LinkSuggestion
        fields = [
            "id",
            "state",
            "score",
            "reasons",
            "patient",
            "candidate",
            "consent",
            "link",
            "created_at",
            "decided_at",
        ]
        read_only_fields = fields


class LinkSuggestionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Possible matches for your institution, best first; nothing is linked until ``confirm/``."""

    serializer_class = LinkSuggestionSerializer
    permission_classes = [IsReferralCoordinator]

    def get_queryset(self) -> QuerySet[LinkSuggestion]:
        qs = access.visible_suggestions(self.request.user).select_related(
            "patient__institution", "candidate__institution"
        )
        if self.action == "list" and self.request.query_params.get("all") not in ("1", "true"):
            qs = qs.filter(state=LinkSuggestion.State.PENDING, consent__revoked_at__isnull=True)
        return qs.order_by("-score", "created_at")

    def get_object(self) -> LinkSuggestion:
        return access.access_suggestion(self.request.user, self.kwargs["pk"])

    @extend_schema(request=None, responses={201: PatientLinkSerializer, 403: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    def confirm(self, request: Request, pk: str | None = None) -> Response:
        """The same person: link the two patients."""
        try:
            link = actions.do_confirm_suggestion(self.get_object(), acting_user=request.user, request=request._request)
        except actions.LinkRefused as refused:
            return _refused(refused)
        return Response(PatientLinkSerializer(access.access_link(request.user, link.pk)).data, status=201)

    @extend_schema(request=None, responses={200: LinkSuggestionSerializer, 403: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        """Not the same person: close the suggestion (it is not made again)."""
        try:
            actions.do_reject_suggestion(self.get_object(), acting_user=request.user, request=request._request)
        except actions.LinkRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(self.get_object()).data)


class PatientConsentSerializer(serializers.ModelSerializer):
    patient = LinkedPatientSerializer(read_only=True)
    granting_institution = InstitutionRefSerializer(read_only=True)
    receiving_institution = InstitutionRefSerializer(read_only=True)
    recorded_by = serializers.CharField(source="recorded_by.username", read_only=True)
    in_force = serializers.SerializerMethodField()

    class Meta:
        model = PatientConsent
        fields = [
            "id", "patient", "granting_institution", "receiving_institution", "scope", "method", "note",
            "recorded_by", "recorded_at", "expires_at", "revoked_at", "revoke_reason", "in_force",
        ]  # fmt: skip
        read_only_fields = fields

    def get_in_force(self, obj: PatientConsent) -> bool:
        return obj.in_force()


class ConsentCreateSerializer(serializers.Serializer):
    patient = serializers.UUIDField(help_text="A patient of your institution.")
    receiving_institution = serializers.UUIDField()
    scope = serializers.ChoiceField(choices=PatientConsent.Scope.choices, default=PatientConsent.Scope.COMPARISON)
    method = serializers.ChoiceField(choices=PatientConsent.Method.choices, default=PatientConsent.Method.WRITTEN)
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ConsentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Patients' consents given at your institution for another, or at another for yours; ``revoke/`` ends one."""

    serializer_class = PatientConsentSerializer
    permission_classes = [IsReferralCoordinator]

    def get_queryset(self) -> QuerySet[PatientConsent]:
        return (
            access.visible_consents(self.request.user)
            .select_related("patient__institution", "granting_institution", "receiving_institution", "recorded_by")
            .order_by("-recorded_at")
        )

    def get_object(self) -> PatientConsent:
        return access.access_consent(self.request.user, self.kwargs["pk"])

    @extend_schema(
        request=ConsentCreateSerializer, responses={201: PatientConsentSerializer, 400: Refusal, 403: Refusal}
    )
    def create(self, request: Request) -> Response:
        """Record a patient's consent; the receiving institution's matching patients are suggested to it."""
        body = ConsentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        patient = Patient.objects.filter(
            pk=data["patient"], institution_id__in=access.coordinator_institutions(request.user)
        ).first()
        if patient is None:
            raise ValidationError({"patient": "No such patient of yours."})
        receiver = Institution.objects.filter(pk=data["receiving_institution"], is_active=True).first()
        if receiver is None:
            raise ValidationError({"receiving_institution": "No such institution."})
        try:
            consent = actions.do_record_patient_consent(
                patient,
                receiving_institution=receiver,
                acting_user=request.user,
                scope=data["scope"],
                method=data["method"],
                note=data["note"],
                expires_at=data["expires_at"],
                request=request._request,
            )
        except actions.LinkRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(self.get_queryset().get(pk=consent.pk)).data, status=201)

    @extend_schema(request=LinkReasonSerializer, responses={200: PatientConsentSerializer, 403: Refusal})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """End the consent now: the receiving hospital's readers lose the patient's priors at once."""
        consent = self.get_object()
        body = LinkReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            actions.do_revoke_patient_consent(
                consent, acting_user=request.user, reason=body.validated_data["reason"], request=request._request
            )
        except actions.LinkRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(self.get_object()).data)


OutsideRead = inline_serializer(
    "OutsideRead",
    {
        "time": serializers.DateTimeField(),
        "user": serializers.CharField(),
        "institutions": serializers.ListField(child=serializers.CharField()),
        "action": serializers.CharField(),
        "object_type": serializers.CharField(),
        "study": serializers.UUIDField(allow_null=True),
        "study_date": serializers.DateField(allow_null=True),
        "study_description": serializers.CharField(),
        "as_prior": serializers.BooleanField(),
        "client_address": serializers.CharField(),
    },
    many=True,
)


class OutsideReadsView(APIView):
    """Who outside the patient's hospital opened the patient's studies and reports there (newest 200)."""

    permission_classes = [IsAuthenticated, HasClinicalRole]

    @extend_schema(
        responses={200: inline_serializer("OutsideReads", {"patient": serializers.UUIDField(), "reads": OutsideRead})},
        tags=["patients"],
        operation_id="patients_outside_reads",
    )
    @audit.records_refusal("workflow.outside_reads_refused", object_type="archive.patient", key="pk")
    def get(self, request: Request, pk: str) -> Response:
        patient = access.access_own_patient(request.user, pk)
        reads = access.outside_reads(patient)
        audit.record(
            "workflow.outside_reads",
            request=request._request,
            institution=patient.institution_id,
            object_type="archive.patient",
            object_id=patient.pk,
            patient_id=patient.patient_id,
            detail={"reads": len(reads)},
        )
        return Response({"patient": str(patient.pk), "reads": reads})
