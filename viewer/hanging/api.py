"""``/api/v1/hanging-protocols/``: the caller's own protocols and their institutions', and the one that applies."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as ModelValidationError
from django.db.models import Q, QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from archive.access import access_study
from pacs_cloud import access
from pacs_cloud.models import Institution, Role

from . import actions
from .matching import protocol_for, study_facts
from .models import HangingProtocol


class HangingProtocolSerializer(serializers.ModelSerializer):
    institution = serializers.PrimaryKeyRelatedField(
        queryset=Institution.objects.all(),
        required=False,
        allow_null=True,
        help_text="An institution you administer (its protocol); leave out for your own.",
    )
    owner = serializers.SerializerMethodField()

    class Meta:
        model = HangingProtocol
        fields = ["id", "institution", "owner", *actions.FIELDS]

    def get_owner(self, protocol: HangingProtocol) -> str:
        return "institution" if protocol.institution_id else "user"

    def validate_institution(self, value: Institution | None) -> Institution | None:
        if value is not None and value.pk not in access.institution_ids(
            self.context["request"].user, [Role.INSTITUTION_ADMIN]
        ):
            raise serializers.ValidationError("You administer no such institution.")
        if self.instance is not None and self.instance.institution_id != getattr(value, "pk", None):
            raise serializers.ValidationError("A protocol keeps its owner.")
        return value


class HangingProtocolViewSet(viewsets.ModelViewSet):
    """Hanging protocols: yours, and your institutions' (changed by their administrators)."""

    serializer_class = HangingProtocolSerializer
    permission_classes = [permissions.IsAuthenticated]
    queryset = HangingProtocol.objects.none()  # the schema's id type; get_queryset() answers requests

    def get_queryset(self) -> QuerySet[HangingProtocol]:
        user = self.request.user
        return HangingProtocol.objects.filter(
            Q(user_id=user.pk) | Q(institution_id__in=access.institution_ids(user))
        ).order_by("institution_id", "position", "created_at")

    def _check_writer(self, protocol: HangingProtocol) -> None:
        if protocol.user_id is not None:
            if protocol.user_id != self.request.user.pk:
                raise Http404("No such protocol")
        elif protocol.institution_id is None or not access.has_role(
            self.request.user, protocol.institution_id, Role.INSTITUTION_ADMIN
        ):
            raise PermissionDenied("Only the institution's administrators change its protocols.")

    def _save(self, serializer: Any, protocol: HangingProtocol | None) -> None:
        values = dict(serializer.validated_data)
        institution = values.pop("institution", None)
        try:
            serializer.instance = actions.do_save_hanging_protocol(
                acting_user=self.request.user, protocol=protocol, institution=institution, **values
            )
        except ModelValidationError as exc:
            raise ValidationError(exc.message_dict) from None

    def perform_create(self, serializer: Any) -> None:
        self._save(serializer, None)

    def perform_update(self, serializer: Any) -> None:
        self._check_writer(serializer.instance)
        self._save(serializer, serializer.instance)

    def perform_destroy(self, instance: HangingProtocol) -> None:
        self._check_writer(instance)
        actions.do_delete_hanging_protocol(instance, acting_user=self.request.user)

    @extend_schema(
        parameters=[
            OpenApiParameter("study", str, required=True, description="The study opened (its id)"),
            OpenApiParameter("priors", int, description="How many priors are shown beside it"),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(detail=False, methods=["get"])
    def match(self, request: Request) -> Response:
        """The protocol that applies to a study you may open, with the facts it was matched on."""
        study = access_study(request.user, pk=request.query_params.get("study", ""))
        try:
            priors = max(0, int(request.query_params.get("priors", "0")))
        except ValueError:
            raise ValidationError({"priors": "A number."}) from None
        modalities, regions = study_facts(study)
        protocol = protocol_for(request.user, study, priors)
        return Response(
            {
                "protocol": HangingProtocolSerializer(protocol).data if protocol else None,
                "modality": modalities[0] if modalities else "",
                "body_region": sorted(regions)[0] if len(regions) == 1 else "",
            }
        )
