"""REST API of the onboarding checklist: its state, and the steps that are not another resource's create.

DICOM nodes (``/api/v1/dicom-nodes/``), invitations (``/api/v1/invitations/``)
and edge enrolment (``/api/v1/edges/``) have their own resources; here are the
checklist, the C-ECHO test, the catalogue import, the routing template and
enrolment with the start command. Every route takes an institution the caller
administers; any other answers 404.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from archive import actions as archive_actions
from archive.edge import enrolment
from archive.models import DicomNode
from pacs_cloud import access
from pacs_cloud.models import Institution, Role
from worklist import actions as worklist_actions

from ..policy import PolicyError
from . import checklist
from .actions import do_start_routing_from_template
from .views import MAX_CSV_BYTES, cloud_url


def _administered(request: Request, institution_id: Any) -> Institution:
    return access.access_institution(request.user, institution_id, Role.INSTITUTION_ADMIN)


class StepSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=["modalities", "procedures", "users", "routing", "edge", "test_image"])
    title = serializers.CharField()
    done = serializers.BooleanField()
    detail = serializers.CharField()


class OnboardingSerializer(serializers.Serializer):
    steps = StepSerializer(many=True)
    edge_connected = serializers.BooleanField(help_text="An edge gateway reported within the last two minutes.")
    first_study_at = serializers.DateTimeField(allow_null=True)
    complete = serializers.BooleanField()


class OnboardingView(APIView):
    """The checklist of an institution you administer: each step and whether it is done."""

    @extend_schema(operation_id="onboarding_retrieve", responses={200: OnboardingSerializer})
    def get(self, request: Request, institution_id: Any) -> Response:
        institution = _administered(request, institution_id)
        return Response(OnboardingSerializer(checklist.status(institution).as_dict()).data)


class EchoSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()
    milliseconds = serializers.IntegerField(allow_null=True)


class EchoView(APIView):
    """C-ECHO one of the institution's DICOM nodes from the server (the node's host and port)."""

    @extend_schema(operation_id="onboarding_echo", request=None, responses={200: EchoSerializer})
    def post(self, request: Request, institution_id: Any, node_id: Any) -> Response:
        institution = _administered(request, institution_id)
        node = get_object_or_404(DicomNode, institution=institution, pk=node_id)
        result = archive_actions.do_echo_dicom_node(node, acting_user=request.user, request=request._request)
        return Response(EchoSerializer(result).data)


class CatalogueUploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="CSV, UTF-8 or GB18030: code,name,modality[,body_part,duration_minutes,coding_scheme]"
    )


class CatalogueRowErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(help_text="Line of the file; the header is line 1.")
    column = serializers.CharField(allow_blank=True)
    message = serializers.CharField()


class CatalogueImportSerializer(serializers.Serializer):
    created = serializers.ListField(child=serializers.CharField(), help_text="Codes added")
    updated = serializers.ListField(child=serializers.CharField(), help_text="Codes changed")
    encoding = serializers.CharField()


class CatalogueErrorsSerializer(serializers.Serializer):
    errors = CatalogueRowErrorSerializer(many=True)


class CatalogueImportView(APIView):
    """Import the procedure catalogue from CSV: all rows or none, each wrong row named."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="onboarding_import_procedures",
        request={"multipart/form-data": CatalogueUploadSerializer},
        responses={201: CatalogueImportSerializer, 400: CatalogueErrorsSerializer},
    )
    def post(self, request: Request, institution_id: Any) -> Response:
        institution = _administered(request, institution_id)
        form = CatalogueUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        if upload.size > MAX_CSV_BYTES:
            return Response({"errors": [{"line": 0, "column": "", "message": "At most 2 MB."}]}, status=400)
        result = worklist_actions.do_import_procedures(
            institution, upload.read(), acting_user=request.user, request=request._request
        )
        if result.errors:
            return Response(CatalogueErrorsSerializer(result).data, status=status.HTTP_400_BAD_REQUEST)
        return Response(CatalogueImportSerializer(result).data, status=status.HTTP_201_CREATED)


class RoutingTemplateSerializer(serializers.Serializer):
    template = serializers.ChoiceField(choices=[(t.key, t.title) for t in checklist.ROUTING_TEMPLATES.values()])
    pool = serializers.UUIDField(required=False, allow_null=True, help_text="For the pool template")


class RoutingPolicyRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    version = serializers.IntegerField()
    name = serializers.CharField()


class RoutingTemplateView(APIView):
    """Start the routing policy from a template (a new current version; edit it later at /api/v1/routing-policies/)."""

    @extend_schema(
        operation_id="onboarding_routing_template",
        request=RoutingTemplateSerializer,
        responses={201: RoutingPolicyRefSerializer, 400: OpenApiResponse(description="Unknown template or pool")},
    )
    def post(self, request: Request, institution_id: Any) -> Response:
        institution = _administered(request, institution_id)
        form = RoutingTemplateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            row = do_start_routing_from_template(
                institution,
                form.validated_data["template"],
                pool_id=form.validated_data.get("pool"),
                acting_user=request.user,
                request=request._request,
            )
        except PolicyError as exc:
            raise serializers.ValidationError(exc.as_dict()) from None
        return Response(RoutingPolicyRefSerializer(row).data, status=status.HTTP_201_CREATED)


class EdgeEnrolSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)


class EdgeStartSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    token = serializers.CharField(help_text="Shown only in this answer.")
    command = serializers.CharField(help_text="Starts the edge gateway on the hospital's server.")


class EdgeEnrolView(APIView):
    """Enrol an edge gateway and get the one command that starts it (its token is in it, shown once)."""

    @extend_schema(
        operation_id="onboarding_enrol_edge", request=EdgeEnrolSerializer, responses={201: EdgeStartSerializer}
    )
    def post(self, request: Request, institution_id: Any) -> Response:
        institution = _administered(request, institution_id)
        form = EdgeEnrolSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            edge, token = enrolment.do_enrol_edge(
                institution, name=form.validated_data["name"], acting_user=request.user, request=request._request
            )
        except enrolment.EnrolmentError as exc:
            raise serializers.ValidationError({"name": [str(exc)]}) from None
        body = {
            "id": edge.pk,
            "name": edge.name,
            "token": token,
            "command": checklist.edge_command(cloud_url(request._request), token),
        }
        response = Response(EdgeStartSerializer(body).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response
