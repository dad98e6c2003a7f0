"""Cloud side: the REST endpoints of edge gateways.

``/api/v1/edge/…`` is called by an edge with its own bearer token (the
service account :func:`enrolment.edge_of` recognises): heartbeat, quarantine
reports, and which forwarded instances the cloud holds with which SHA-256.
``/api/v1/edges/`` is the institution admins' resource: enrol, rotate,
revoke, and each edge's health.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pacs_cloud import access, audit
from pacs_cloud.access import IsInstitutionAdmin
from pacs_cloud.authentication import BearerTokenAuthentication
from pacs_cloud.models import Role

from ..models import DicomNode, EdgeGateway, EdgeQuarantine
from . import enrolment


class QuarantineSerializer(serializers.ModelSerializer):
    class Meta:
        model = EdgeQuarantine
        fields = ["sop_instance_uid", "study_instance_uid", "sha256", "reason", "status_code", "quarantined_at"]


class EdgeGatewaySerializer(serializers.ModelSerializer):
    institution = serializers.UUIDField(source="institution_id", read_only=True)
    health = serializers.SerializerMethodField()

    class Meta:
        model = EdgeGateway
        fields = [
            "id",
            "institution",
            "name",
            "created_at",
            "revoked_at",
            "last_seen_at",
            "version",
            "outbox_depth",
            "oldest_unsent_seconds",
            "disk_free_bytes",
            "online_bytes",
            "quarantined",
            "last_sync_at",
            "health",
        ]
        read_only_fields = [f for f in fields if f != "name"]

    @extend_schema(exclude=True)
    def get_health(self, edge: EdgeGateway) -> dict[str, Any]:
        return enrolment.health(edge)


class EnrolSerializer(serializers.Serializer):
    institution = serializers.UUIDField(required=False)
    name = serializers.CharField(max_length=100)


class EdgeGatewayViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The institution's edge gateways: enrol one (its token is in the answer, once), rotate, revoke."""

    serializer_class = EdgeGatewaySerializer
    permission_classes = [IsInstitutionAdmin]

    def get_queryset(self) -> QuerySet[EdgeGateway]:
        ids = access.institution_ids(self.request.user, [Role.INSTITUTION_ADMIN])
        return EdgeGateway.objects.filter(institution_id__in=ids).order_by("name")

    @extend_schema(
        request=EnrolSerializer,
        responses=inline_serializer(
            "EnrolledEdge", {"edge": EdgeGatewaySerializer(), "token": serializers.CharField()}
        ),
    )
    def create(self, request: Request) -> Response:
        given = EnrolSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        ids = access.institution_ids(request.user, [Role.INSTITUTION_ADMIN])
        chosen = given.validated_data.get("institution")
        if chosen is None and len(ids) == 1:
            chosen = next(iter(ids))
        if chosen is None:
            raise ValidationError({"institution": ["Name the institution."]})
        institution = access.access_institution(request.user, chosen, Role.INSTITUTION_ADMIN)
        try:
            edge, key = enrolment.do_enrol_edge(
                institution, name=given.validated_data["name"], acting_user=request.user, request=request._request
            )
        except enrolment.EnrolmentError as exc:
            raise ValidationError({"name": [str(exc)]}) from None
        return Response({"edge": EdgeGatewaySerializer(edge).data, "token": key}, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=inline_serializer("RotatedEdgeToken", {"token": serializers.CharField()}))
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        edge = get_object_or_404(self.get_queryset(), pk=pk)
        try:
            key = enrolment.do_rotate_edge_token(edge, acting_user=request.user, request=request._request)
        except enrolment.EnrolmentError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response({"token": key})

    @extend_schema(request=None, responses=EdgeGatewaySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        edge = get_object_or_404(self.get_queryset(), pk=pk)
        enrolment.do_revoke_edge(edge, acting_user=request.user, request=request._request)
        edge.refresh_from_db()
        return Response(EdgeGatewaySerializer(edge).data)

    @extend_schema(responses=QuarantineSerializer(many=True))
    @action(detail=True, methods=["get"])
    def quarantine(self, request: Request, pk: str | None = None) -> Response:
        edge = get_object_or_404(self.get_queryset(), pk=pk)
        return Response(QuarantineSerializer(edge.quarantine.all()[:500], many=True).data)


# Called by the edge itself ---------------------------------------------------------------


class IsEdgeGateway(BasePermission):
    message = "Only an enrolled edge gateway may call this."

    def has_permission(self, request: Any, view: Any) -> bool:
        edge = enrolment.edge_of(request.user)
        request.edge = edge
        return edge is not None


class EdgeView(APIView):
    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAuthenticated, IsEdgeGateway]

    def edge(self, request: Request) -> EdgeGateway:
        found = getattr(request._request, "edge", None) or getattr(request, "edge", None)
        if found is None:
            raise PermissionDenied()
        return found


class HeartbeatView(EdgeView):
    """``POST /api/v1/edge/heartbeat/``: the edge's version, outbox depth, oldest unsent age, disk free, last sync."""

    @extend_schema(
        request=inline_serializer(
            "EdgeHeartbeat",
            {
                "version": serializers.CharField(),
                "outbox_depth": serializers.IntegerField(),
                "oldest_unsent_seconds": serializers.FloatField(allow_null=True),
                "disk_free_bytes": serializers.IntegerField(),
                "online_bytes": serializers.IntegerField(),
                "quarantined": serializers.IntegerField(),
                "last_sync_at": serializers.DateTimeField(allow_null=True),
            },
        ),
        responses=EdgeGatewaySerializer,
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationError({"detail": "a JSON object is expected"})
        try:
            edge = enrolment.do_record_heartbeat(
                self.edge(request), request.data, address=audit.client_address(request._request)
            )
        except enrolment.EnrolmentError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response(EdgeGatewaySerializer(edge).data)


class QuarantineReportView(EdgeView):
    """``POST /api/v1/edge/quarantine/``: instances the cloud refused for good, as the edge holds them."""

    @extend_schema(
        request=inline_serializer("EdgeQuarantineReport", {"items": QuarantineSerializer(many=True)}),
        responses=inline_serializer("EdgeQuarantineRecorded", {"recorded": serializers.IntegerField()}),
    )
    def post(self, request: Request) -> Response:
        items = request.data.get("items") if isinstance(request.data, dict) else None
        if not isinstance(items, list):
            raise ValidationError({"items": ["a list is expected"]})
        created = enrolment.do_record_quarantine(self.edge(request), [i for i in items if isinstance(i, dict)])
        return Response({"recorded": created})


class ConfirmView(EdgeView):
    """``POST /api/v1/edge/confirm/``: the SHA-256 the cloud holds for each named SOP instance.

    The edge evicts a local copy only when this digest equals its own.
    """

    @extend_schema(
        request=inline_serializer(
            "EdgeConfirmRequest", {"sop_instance_uids": serializers.ListField(child=serializers.CharField())}
        ),
        responses=inline_serializer(
            "EdgeConfirmation", {"confirmed": serializers.DictField(child=serializers.CharField())}
        ),
    )
    def post(self, request: Request) -> Response:
        uids = request.data.get("sop_instance_uids") if isinstance(request.data, dict) else None
        if not isinstance(uids, list):
            raise ValidationError({"sop_instance_uids": ["a list is expected"]})
        return Response({"confirmed": enrolment.confirmations(self.edge(request), uids)})


class ConfigView(EdgeView):
    """``GET /api/v1/edge/config/``: the institution's DICOM nodes the edge lets in."""

    @extend_schema(
        responses=inline_serializer(
            "EdgeConfig",
            {"institution": serializers.CharField(), "nodes": serializers.ListField(child=serializers.DictField())},
        )
    )
    def get(self, request: Request) -> Response:
        edge = self.edge(request)
        nodes = DicomNode.objects.filter(institution_id=edge.institution_id, is_active=True).order_by("ae_title")
        return Response(
            {
                "institution": edge.institution.name,
                "nodes": [{"ae_title": n.ae_title, "host": n.host, "port": n.port} for n in nodes],
            }
        )
