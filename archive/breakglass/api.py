"""``/api/v1/break-glass/``: open an emergency access (POST) and list the accesses one may review (GET)."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from pacs_cloud import access
from pacs_cloud.models import Role

from .actions import BreakGlassError, do_break_glass
from .models import BreakGlassAccess


class BreakGlassAccessSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = BreakGlassAccess
        fields = [
            "id",
            "user",
            "via_institution",
            "institution",
            "study",
            "study_instance_uid",
            "reason",
            "started_at",
            "expires_at",
            "ended_at",
            "active",
        ]
        read_only_fields = fields


class BreakGlassRequestSerializer(serializers.Serializer):
    study_instance_uid = serializers.CharField(max_length=64)
    reason = serializers.CharField(max_length=2000)


def reviewable(user: Any) -> QuerySet[BreakGlassAccess]:
    """The caller's own accesses and, for administrators, every access touching their institutions."""
    admin_of = access.institution_ids(user, [Role.INSTITUTION_ADMIN])
    return BreakGlassAccess.objects.filter(
        Q(user=user) | Q(institution_id__in=admin_of) | Q(via_institution_id__in=admin_of)
    ).select_related("user", "study")


class BreakGlassViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Emergency ("break-glass") read access to a study outside the caller's grants.

    POST: a clinician or radiologist names the study and the emergency; the
    answer is the access, readable until ``expires_at``. Both institutions'
    administrators are alerted; 404 alike for a study that does not exist and
    one the caller may not break glass on. GET: the accesses the caller may
    review.
    """

    serializer_class = BreakGlassAccessSerializer
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> QuerySet[BreakGlassAccess]:
        return reviewable(self.request.user)

    @extend_schema(request=BreakGlassRequestSerializer, responses={201: BreakGlassAccessSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        wanted = BreakGlassRequestSerializer(data=request.data)
        wanted.is_valid(raise_exception=True)
        try:
            opened = do_break_glass(
                request.user,
                wanted.validated_data["study_instance_uid"],
                reason=wanted.validated_data["reason"],
                request=request._request,
            )
        except BreakGlassError as exc:
            if exc.not_found:
                return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
            return Response({"reason": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(BreakGlassAccessSerializer(opened).data, status=status.HTTP_201_CREATED)
