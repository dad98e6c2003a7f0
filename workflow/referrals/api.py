"""REST API of referrals and shares: ``/api/v1/referrals/`` and ``/api/v1/study-shares/``.

A referral's actions are one POST each (``send/``, ``accept/``, ``decline/``,
``admit/``, ``return/``, ``close/``, ``cancel/``, ``consent/``, ``attach/``,
``detach/``, ``messages/``, ``import/``); ``timeline/`` is its history of
transitions and messages. Lists show only what the caller may see; a
referral's attached studies are described only to callers who may open them
(for the receiver: while they are shared).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from archive.access import access_study, visible_studies
from archive.api import PatientRefSerializer
from archive.models import Patient, Study
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.api import InstitutionRefSerializer
from pacs_cloud.models import Institution, Role

from . import access, actions
from .models import REFERRAL_SWEEP, ImportedStudy, Referral, ReferralMessage, StudyShare

REFUSAL_STATUS = {
    "bad_state": status.HTTP_409_CONFLICT,
    "forbidden": status.HTTP_403_FORBIDDEN,
    "invalid": status.HTTP_400_BAD_REQUEST,
}
BOXES = ("all", "inbox", "outbox")
Refusal = inline_serializer("ReferralRefusal", {"detail": serializers.CharField(), "code": serializers.CharField()})


def _refused(error: actions.ReferralRefused | actions.ShareRefused) -> Response:
    return Response({"detail": error.message, "code": error.code}, status=REFUSAL_STATUS.get(error.code, 400))


# Serializers -------------------------------------------------------------------------


class ReferralStudySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    shared = serializers.BooleanField()
    institution = serializers.UUIDField(help_text="Whose study: the sender's, or the receiver's sent back.")
    study_instance_uid = serializers.CharField(allow_null=True)
    description = serializers.CharField(allow_null=True)
    study_date = serializers.DateField(allow_null=True)
    modalities = serializers.CharField(
        allow_null=True, help_text="Modalities in Study of every object, the archived report (DOC) included."
    )
    num_instances = serializers.IntegerField(allow_null=True, help_text="Every object, the archived report included.")
    # What a page shows: the images, and the archived report as the report.
    image_modalities = serializers.ListField(child=serializers.CharField(), allow_null=True)
    image_series = serializers.IntegerField(allow_null=True)
    image_instances = serializers.IntegerField(allow_null=True)
    has_report_document = serializers.BooleanField(allow_null=True)
    viewer_url = serializers.CharField(allow_null=True)


class ConsentSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=Referral.ConsentMethod.choices)
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class ConsentRecordSerializer(serializers.Serializer):
    method = serializers.CharField()
    note = serializers.CharField()
    recorded_at = serializers.DateTimeField()
    recorded_by = serializers.CharField()


class ReferralSerializer(serializers.ModelSerializer):
    from_institution = InstitutionRefSerializer(read_only=True)
    to_institution = InstitutionRefSerializer(read_only=True)
    patient = serializers.SerializerMethodField()
    clinical_summary = serializers.SerializerMethodField()
    studies = serializers.SerializerMethodField()
    consent = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    actions = serializers.SerializerMethodField()

    class Meta:
        model = Referral
        fields = [
            "id",
            "state",
            "direction",
            "urgency",
            "reason",
            "clinical_summary",
            "from_institution",
            "to_institution",
            "patient",
            "studies",
            "consent",
            "share_until",
            "response_due_at",
            "reminders_sent",
            "decline_reason",
            "discharge_summary",
            "follow_up_plan",
            "created_by",
            "created_at",
            "sent_at",
            "responded_at",
            "returned_at",
            "ended_at",
            "updated_at",
            "actions",
        ]
        read_only_fields = fields

    @extend_schema_field(PatientRefSerializer(allow_null=True))
    def get_patient(self, obj: Referral) -> dict[str, Any] | None:
        if not self._shows_patient(obj):
            return None
        return PatientRefSerializer(obj.patient).data

    def _shows_patient(self, obj: Referral) -> bool:
        user = self.context["request"].user
        if "_mine" not in self.context:
            self.context["_mine"] = core_access.institution_ids(user, access.REFERRAL_ROLES)
        return access.shows_patient(user, obj, self.context["_mine"])

    def get_clinical_summary(self, obj: Referral) -> str | None:
        return obj.clinical_summary if self._shows_patient(obj) else None

    def _visible_ids(self) -> set[Any]:
        """Which attached studies the caller may open, for every referral being shown, in one query."""
        if "_visible_studies" not in self.context:
            shown = self.parent.instance if self.parent is not None else [self.instance]
            attached = [row.study_id for referral in shown for row in referral.attachments.all()]
            user = self.context["request"].user
            self.context["_visible_studies"] = set(
                visible_studies(user).filter(pk__in=attached).values_list("pk", flat=True)
            )
        return self.context["_visible_studies"]

    @extend_schema_field(ReferralStudySerializer(many=True))
    def get_studies(self, obj: Referral) -> list[dict[str, Any]]:
        visible = self._visible_ids()
        shared = {s.study_id for s in obj.shares.all() if s.revoked_at is None}
        rows = []
        for row in obj.attachments.all():
            study = row.study
            seen = study.pk in visible
            rows.append(
                {
                    "id": study.pk,
                    "shared": study.pk in shared,
                    "institution": study.institution_id,
                    "study_instance_uid": study.study_instance_uid if seen else None,
                    "description": study.description if seen else None,
                    "study_date": study.study_date if seen else None,
                    "modalities": study.modalities if seen else None,
                    "num_instances": study.num_instances if seen else None,
                    "image_modalities": study.image_modalities if seen else None,
                    "image_series": study.image_series if seen else None,
                    "image_instances": study.image_instances if seen else None,
                    "has_report_document": study.has_report_document if seen else None,
                    "viewer_url": access.viewer_url(study.pk) if seen else None,
                }
            )
        return rows

    @extend_schema_field(ConsentRecordSerializer(allow_null=True))
    def get_consent(self, obj: Referral) -> dict[str, Any] | None:
        if not obj.consent_recorded_at:
            return None
        by = obj.consent_recorded_by
        return {
            "method": obj.consent_method,
            "note": obj.consent_note,
            "recorded_at": obj.consent_recorded_at,
            "recorded_by": (by.display_name or by.username) if by else "",
        }

    def get_created_by(self, obj: Referral) -> str:
        return obj.created_by.display_name or obj.created_by.username

    def get_actions(self, obj: Referral) -> list[str]:
        user = self.context["request"].user
        if "_coordinating" not in self.context:
            self.context["_coordinating"] = core_access.institution_ids(user, [Role.REFERRAL_COORDINATOR])
        return access.allowed_actions(user, obj, self.context["_coordinating"])


class ReferralCreateSerializer(serializers.Serializer):
    to_institution = serializers.UUIDField()
    from_institution = serializers.UUIDField(required=False, help_text="Needed only when you coordinate for several.")
    patient = serializers.UUIDField(required=False, help_text="The sending institution's patient; else the studies'.")
    studies = serializers.ListField(child=serializers.UUIDField(), required=False, default=list)
    reason = serializers.CharField(max_length=500)
    direction = serializers.ChoiceField(choices=Referral.Direction.choices, default=Referral.Direction.UPWARD)
    urgency = serializers.ChoiceField(choices=Referral.Urgency.choices, default=Referral.Urgency.ROUTINE)
    clinical_summary = serializers.CharField(required=False, allow_blank=True, default="")
    share_until = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ReferralReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class ReturnSerializer(serializers.Serializer):
    discharge_summary = serializers.CharField()
    follow_up_plan = serializers.CharField()
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class StudyBodySerializer(serializers.Serializer):
    study = serializers.UUIDField()


class MessageSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()
    institution = serializers.SerializerMethodField()
    body = serializers.CharField(max_length=5000)

    class Meta:
        model = ReferralMessage
        fields = ["id", "kind", "author", "institution", "body", "created_at"]
        read_only_fields = ["id", "kind", "author", "institution", "created_at"]

    def get_author(self, obj: ReferralMessage) -> str:
        return (obj.author.display_name or obj.author.username) if obj.author else REFERRAL_SWEEP

    def get_institution(self, obj: ReferralMessage) -> str:
        return obj.institution.name if obj.institution else ""


class TimelineSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    kind = serializers.CharField()
    actor = serializers.CharField()
    institution = serializers.CharField()
    text = serializers.CharField()
    source = serializers.CharField()
    target = serializers.CharField()


class ImportSerializer(serializers.Serializer):
    study = serializers.UUIDField()
    patient = serializers.UUIDField(required=False, help_text="An existing patient of your institution.")
    patient_id = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=324)
    birth_date = serializers.DateField(required=False, allow_null=True, default=None)
    sex = serializers.CharField(required=False, allow_blank=True, default="", max_length=1)


class ShareImportSerializer(serializers.Serializer):
    patient = serializers.UUIDField(required=False, help_text="An existing patient of your institution.")
    patient_id = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=324)
    birth_date = serializers.DateField(required=False, allow_null=True, default=None)
    sex = serializers.CharField(required=False, allow_blank=True, default="", max_length=1)


class ImportedSerializer(serializers.ModelSerializer):
    patient = PatientRefSerializer(read_only=True)

    class Meta:
        model = ImportedStudy
        fields = ["id", "source_study", "study", "patient", "instances", "imported_at"]
        read_only_fields = fields


class StudyShareSerializer(serializers.ModelSerializer):
    institution = InstitutionRefSerializer(read_only=True)
    study = serializers.SerializerMethodField()
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = StudyShare
        fields = [
            "id",
            "kind",
            "study",
            "institution",
            "referral",
            "reason",
            "granted_at",
            "expires_at",
            "revoked_at",
            "revoke_reason",
            "active",
        ]
        read_only_fields = fields

    def get_study(self, obj: StudyShare) -> str:
        return str(obj.study_id)


class ShareCreateSerializer(serializers.Serializer):
    study = serializers.UUIDField()
    institution = serializers.UUIDField()
    reason = serializers.CharField(max_length=500)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


# Views -----------------------------------------------------------------------------------


def _study_for(user: Any, pk: Any) -> Study:
    """A study the caller may see (404 alike for missing and not yours)."""
    return access_study(user, pk=pk)


class ReferralViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Referrals sent from or to the caller's institutions (coordinators and clinicians)."""

    serializer_class = ReferralSerializer

    def get_queryset(self) -> QuerySet[Referral]:
        qs = access.visible_referrals(self.request.user)
        if self.action == "list":
            params = self.request.query_params
            box = params.get("box") or "all"
            if box not in BOXES:
                raise ValidationError({"box": f"one of {', '.join(BOXES)}"})
            mine = core_access.institution_ids(self.request.user, access.REFERRAL_ROLES)
            if box == "inbox":
                qs = qs.filter(to_institution_id__in=mine)
            elif box == "outbox":
                qs = qs.filter(from_institution_id__in=mine)
            if params.get("state"):
                qs = qs.filter(state=params["state"])
        return qs.select_related(
            "patient", "from_institution", "to_institution", "created_by", "consent_recorded_by"
        ).prefetch_related("attachments__study", "shares")

    def get_object(self) -> Referral:
        return access.access_referral(self.request.user, self.kwargs["pk"])

    @extend_schema(
        parameters=[
            OpenApiParameter("box", str, enum=list(BOXES), description="inbox (to us), outbox (from us) or all"),
            OpenApiParameter("state", str, enum=list(Referral.State.values)),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        shown = [row["id"] for row in response.data["results"]]
        if shown:
            audit.record(
                "workflow.referral.list",
                request=request._request,
                object_type="workflow.referral",
                detail={"referrals": [str(pk) for pk in shown]},
            )
        return response

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        referral = self.get_object()
        audit.record(
            "workflow.referral.view",
            request=request._request,
            institution=access.acting_institution(request.user, referral),
            object_type="workflow.referral",
            object_id=referral.pk,
            patient_id=referral.patient.patient_id,
        )
        return Response(self.get_serializer(referral).data)

    def _fresh(self, referral: Referral, code: int = status.HTTP_200_OK) -> Response:
        found = self.get_queryset().get(pk=referral.pk)
        return Response(self.get_serializer(found).data, status=code)

    @extend_schema(request=ReferralCreateSerializer, responses={201: ReferralSerializer, 400: Refusal, 403: Refusal})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Draft a referral of one of your institution's patients, with studies attached."""
        body = ReferralCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        user = request.user
        mine = core_access.institution_ids(user, [Role.REFERRAL_COORDINATOR])
        if not mine:
            return Response(
                {"detail": "Only referral coordinators create referrals.", "code": "forbidden"},
                status=status.HTTP_403_FORBIDDEN,
            )
        if data.get("from_institution"):
            if data["from_institution"] not in mine:
                raise Http404("No such institution")
            from_id = data["from_institution"]
        elif len(mine) == 1:
            from_id = next(iter(mine))
        else:
            raise ValidationError({"from_institution": "You coordinate for several institutions: name one."})
        # Objects named in the body are resolved first, so another institution's
        # patient or study is refused (404) before anything else is checked.
        studies = [_study_for(user, pk) for pk in data["studies"]]
        patient = None
        if data.get("patient"):
            patient = Patient.objects.filter(pk=data["patient"], institution_id=from_id).first()
            if patient is None:
                raise Http404("No such patient")
        to = Institution.objects.filter(pk=data["to_institution"], is_active=True).first()
        if to is None:
            raise ValidationError({"to_institution": "No such institution."})
        if patient is not None:
            pass
        elif studies:
            patient = studies[0].patient
        else:
            raise ValidationError({"patient": "Name the patient, or attach at least one of their studies."})
        try:
            referral = actions.do_create_referral(
                acting_user=user,
                from_institution=Institution.objects.get(pk=from_id),
                to_institution=to,
                patient=patient,
                reason=data["reason"],
                direction=data["direction"],
                urgency=data["urgency"],
                clinical_summary=data["clinical_summary"],
                share_until=data["share_until"],
                studies=studies,
                request=request._request,
            )
        except actions.ReferralRefused as refused:
            return _refused(refused)
        return self._fresh(referral, status.HTTP_201_CREATED)

    def _act(self, request: Request, pk: Any, do: Any, **kwargs: Any) -> Response:
        referral = self.get_object()
        try:
            do(referral, acting_user=request.user, request=request._request, **kwargs)
        except actions.ReferralRefused as refused:
            return _refused(refused)
        return self._fresh(referral)

    def _reason(self, request: Request) -> str:
        body = ReferralReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return body.validated_data["reason"]

    @extend_schema(
        request=ReferralReasonSerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"])
    def send(self, request: Request, pk: str | None = None) -> Response:
        """Send the draft (consent recorded first); its studies are shared with the receiver."""
        return self._act(request, pk, actions.do_send_referral, reason=self._reason(request))

    @extend_schema(request=ReferralReasonSerializer, responses={200: ReferralSerializer, 403: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    def accept(self, request: Request, pk: str | None = None) -> Response:
        """The receiver accepts the patient."""
        return self._act(request, pk, actions.do_accept_referral, reason=self._reason(request))

    @extend_schema(
        request=ReferralReasonSerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"])
    def decline(self, request: Request, pk: str | None = None) -> Response:
        """The receiver declines (a reason is required); sharing ends."""
        return self._act(request, pk, actions.do_decline_referral, reason=self._reason(request))

    @extend_schema(request=ReferralReasonSerializer, responses={200: ReferralSerializer, 403: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    def admit(self, request: Request, pk: str | None = None) -> Response:
        """The accepted patient is in the receiver's care."""
        return self._act(request, pk, actions.do_admit_referral, reason=self._reason(request))

    @extend_schema(
        request=ReturnSerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"], url_path="return", url_name="return")
    def return_patient(self, request: Request, pk: str | None = None) -> Response:
        """The downward referral back, with discharge summary and follow-up plan."""
        body = ReturnSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._act(request, pk, actions.do_return_referral, **body.validated_data)

    @extend_schema(request=ReferralReasonSerializer, responses={200: ReferralSerializer, 403: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    def close(self, request: Request, pk: str | None = None) -> Response:
        """The sender closes a returned referral; sharing ends."""
        return self._act(request, pk, actions.do_close_referral, reason=self._reason(request))

    @extend_schema(
        request=ReferralReasonSerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """The sender withdraws the referral (a reason is required); sharing ends."""
        return self._act(request, pk, actions.do_cancel_referral, reason=self._reason(request))

    @extend_schema(
        request=ConsentSerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"])
    def consent(self, request: Request, pk: str | None = None) -> Response:
        """Record the patient's consent to the transfer."""
        body = ConsentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._act(request, pk, actions.do_record_consent, **body.validated_data)

    @extend_schema(
        request=StudyBodySerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"])
    def attach(self, request: Request, pk: str | None = None) -> Response:
        """Attach a study of the patient that you can see at the sending institution."""
        return self._study_change(request, actions.do_attach_study)

    @extend_schema(
        request=StudyBodySerializer, responses={200: ReferralSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"])
    def detach(self, request: Request, pk: str | None = None) -> Response:
        """Take a study off a draft."""
        return self._study_change(request, actions.do_detach_study)

    def _study_change(self, request: Request, change: Any) -> Response:
        body = StudyBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        referral = self.get_object()
        study = _study_for(request.user, body.validated_data["study"])
        try:
            change(referral, study, acting_user=request.user, request=request._request)
        except actions.ReferralRefused as refused:
            return _refused(refused)
        return self._fresh(referral)

    @extend_schema(
        methods=["GET"], request=None, responses={200: MessageSerializer(many=True)}, description="The messages."
    )
    @extend_schema(methods=["POST"], request=MessageSerializer, responses={201: MessageSerializer, 400: Refusal})
    @action(detail=True, methods=["get", "post"])
    def messages(self, request: Request, pk: str | None = None) -> Response:
        """Messages between the two teams (and reminders of the response deadline)."""
        referral = self.get_object()
        if request.method == "POST":
            body = MessageSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            try:
                message = actions.do_post_message(
                    referral, acting_user=request.user, body=body.validated_data["body"], request=request._request
                )
            except actions.ReferralRefused as refused:
                return _refused(refused)
            return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)
        rows = referral.messages.select_related("author", "institution")
        return Response(MessageSerializer(rows, many=True).data)

    @extend_schema(
        request=ImportSerializer, responses={201: ImportedSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"], url_path="import", url_name="import")
    def import_study(self, request: Request, pk: str | None = None) -> Response:
        """Import an attached, shared study into the receiving institution's archive under its own patient.

        Name one of your patients (``patient``), or register one (``patient_id``
        blank: an identifier is issued; name, birth date and sex default to
        the shared study's).
        """
        referral = self.get_object()
        body = ImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if not access.is_receiver(request.user, referral):
            return _refused(actions.ReferralRefused("Only the receiving institution imports.", "forbidden"))
        if "import" not in access.allowed_actions(request.user, referral):
            return _refused(actions.ReferralRefused("Import once the referral is accepted.", "bad_state"))
        attached = referral.attachments.filter(study_id=data["study"]).select_related("study__patient").first()
        if attached is None:
            raise Http404("No such study on this referral")
        try:
            patient = actions.do_resolve_local_patient(
                referral.to_institution,
                attached.study.patient,
                acting_user=request.user,
                pk=data.get("patient"),
                patient_id=data["patient_id"],
                name=data["name"],
                birth_date=data["birth_date"],
                sex=data["sex"],
                request=request._request,
            )
            imported = actions.do_import_shared_study(
                attached.study, patient=patient, acting_user=request.user, request=request._request
            )
        except DjangoValidationError as error:
            raise ValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages) from None
        except actions.ImportRefused as refused:
            return Response({"detail": refused.message, "code": refused.code}, status=REFUSAL_STATUS[refused.code])
        return Response(ImportedSerializer(imported).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: TimelineSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def timeline(self, request: Request, pk: str | None = None) -> Response:
        """Every transition (with actor and reason) and message, oldest first."""
        referral = self.get_object()
        return Response(TimelineSerializer([e.__dict__ for e in access.timeline(referral)], many=True).data)


class StudyShareViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Shares of our studies with other institutions, and of other institutions' studies with us.

    ``POST`` shares a study for a second opinion (with an expiry); ``revoke/``
    ends a share early.
    """

    serializer_class = StudyShareSerializer

    def get_queryset(self) -> QuerySet[StudyShare]:
        qs = access.visible_shares(self.request.user)
        if self.action == "list" and self.request.query_params.get("active") in ("1", "true"):
            qs = qs.filter(revoked_at__isnull=True)
        return qs.order_by("-granted_at")

    def get_object(self) -> StudyShare:
        try:
            return self.get_queryset().get(pk=UUID(str(self.kwargs["pk"])))
        except (ValueError, StudyShare.DoesNotExist):
            raise Http404("No such share") from None

    @extend_schema(parameters=[OpenApiParameter("active", bool, description="only shares in force")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ShareCreateSerializer, responses={201: StudyShareSerializer, 400: Refusal, 403: Refusal})
    def create(self, request: Request) -> Response:
        """Share one of your institution's studies with another institution for a second opinion."""
        body = ShareCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        study = _study_for(request.user, data["study"])
        institution = Institution.objects.filter(pk=data["institution"]).first()
        if institution is None:
            raise ValidationError({"institution": "No such institution."})
        try:
            share = actions.do_share_for_second_opinion(
                study,
                institution,
                acting_user=request.user,
                reason=data["reason"],
                expires_at=data["expires_at"],
                request=request._request,
            )
        except actions.ShareRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(share).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=ShareImportSerializer, responses={201: ImportedSerializer, 400: Refusal, 403: Refusal, 409: Refusal}
    )
    @action(detail=True, methods=["post"], url_path="import", url_name="import")
    def import_study(self, request: Request, pk: str | None = None) -> Response:
        """Import the shared study into your institution's archive under one of your patients (or a new one)."""
        share = self.get_object()
        if not access.can_import_share(request.user, share):
            return _refused(actions.ShareRefused("Only the institution it is shared with imports it.", "forbidden"))
        body = ShareImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            imported = actions.do_import_share(
                share,
                acting_user=request.user,
                pk=data.get("patient"),
                patient_id=data["patient_id"],
                name=data["name"],
                birth_date=data["birth_date"],
                sex=data["sex"],
                request=request._request,
            )
        except DjangoValidationError as error:
            raise ValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages) from None
        except actions.ImportRefused as refused:
            return Response({"detail": refused.message, "code": refused.code}, status=REFUSAL_STATUS[refused.code])
        return Response(ImportedSerializer(imported).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ReferralReasonSerializer, responses={200: StudyShareSerializer, 403: Refusal})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """End a second-opinion share now (a referral's shares end with the referral)."""
        share = self.get_object()
        if not access.can_revoke_share(request.user, share):
            return _refused(actions.ShareRefused(access.REVOKE_REFUSED, "forbidden"))
        body = ReferralReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actions.do_end_second_opinion(
            share, acting_user=request.user, reason=body.validated_data["reason"], request=request._request
        )
        share.refresh_from_db()
        return Response(self.get_serializer(share).data)
