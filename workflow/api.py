"""REST API: ``/api/v1/reading-tasks/`` (``claim/``, ``release/``), pools, agreements, routing policies."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q, QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from archive.models import Study
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.fsm import history
from pacs_cloud.models import Institution, User
from pacs_cloud.restapi import Pagination

from . import access, actions, diagram, policy
from .facts import study_facts
from .models import PoolMember, Priority, RadiologistPool, ReadingAgreement, ReadingTask, RoutingPolicy
from .serializers import (
    DryRunRequestSerializer,
    DryRunResultSerializer,
    PoolMemberSerializer,
    RadiologistPoolSerializer,
    ReadingAgreementSerializer,
    ReadingTaskSerializer,
    ReassignSerializer,
    ReleaseSerializer,
    RoutingPolicySerializer,
    TransitionSerializer,
)

REFUSAL_STATUS = {
    "not_open": status.HTTP_409_CONFLICT,
    "cap_reached": status.HTTP_409_CONFLICT,
    "same_reader": status.HTTP_409_CONFLICT,
    "not_holder": status.HTTP_409_CONFLICT,
    "bad_state": status.HTTP_409_CONFLICT,
    "not_offered": status.HTTP_403_FORBIDDEN,
    "bad_target": status.HTTP_400_BAD_REQUEST,
}
ORDERINGS = {
    "priority": ["priority_rank", "due_at"],
    # Descending orders reverse every key so an index serves them backwards.
    "-priority": ["-priority_rank", "-due_at"],
    "sla": ["due_at"],
    "-sla": ["-due_at"],
    "hospital": ["hospital_name", "priority_rank", "due_at"],
    "-hospital": ["-hospital_name", "-priority_rank", "-due_at"],
    "modality": ["modality", "priority_rank", "due_at"],
    "-modality": ["-modality", "-priority_rank", "-due_at"],
    "offered": ["-offered_at"],
    "finished": ["-finished_at"],
}
VIEWS = ("offered", "claimed", "finished", "all")

Refusal = inline_serializer("TaskRefusal", {"detail": serializers.CharField(), "code": serializers.CharField()})


def worklist_queryset(user: Any, params: Any, who: access.Reader | None = None) -> QuerySet[ReadingTask]:
    """The tasks of one worklist view with its filters and ordering (shared by the API and the page)."""
    view = params.get("view") or "offered"
    if view not in VIEWS:
        raise ValidationError({"view": f"one of {', '.join(VIEWS)}"})
    if view == "offered":
        qs = access.offered_tasks(user, who)
    elif view == "claimed":
        qs = access.held_tasks(user)
    elif view == "finished":
        qs = access.finished_tasks(user)
    else:
        qs = access.visible_tasks(user, who)
    if params.get("priority"):
        qs = qs.filter(priority=params["priority"])
    if params.get("modality"):
        qs = qs.filter(modality=params["modality"].upper())
    if params.get("hospital"):
        try:
            hospital = uuid.UUID(str(params["hospital"]))
        except ValueError:
            raise ValidationError({"hospital": "expected an institution id"}) from None
        # Filtering by a hospital you neither read for nor work at answers as
        # an unknown one does: 404, never an empty list that confirms it exists.
        who = who or access.reader(user)
        if hospital not in who.hospitals() | who.monitored:
            raise Http404("No such hospital")
        qs = qs.filter(institution_id=hospital)
    ordering = params.get("ordering") or ("finished" if view == "finished" else "priority")
    if ordering not in ORDERINGS:
        raise ValidationError({"ordering": f"one of {', '.join(ORDERINGS)}"})
    keys = ORDERINGS[ordering]
    tie = "-id" if keys[-1].startswith("-") else "id"
    return qs.select_related("institution", "claimed_by", "study__patient").order_by(*keys, tie)


class WorklistPagination(Pagination):
    """Limit/offset pages whose ``count`` is exact up to ``COUNT_CAP``.

    Above the cap ``count`` reports the cap plus one: a list that long is
    narrowed with filters, and counting every row of it would cost more than
    the page itself.
    """

    COUNT_CAP = 1_000

    def get_count(self, queryset: Any) -> int:
        return queryset.order_by()[: self.COUNT_CAP + 1].count()


def audit_patient_list(request: Any, task_ids: list[Any]) -> None:
    """A list that showed patients' identities is a read of PHI: one audit event names the tasks."""
    if task_ids:
        audit.record(
            "workflow.worklist.view",
            request=request,
            object_type="workflow.readingtask",
            detail={"tasks": [str(pk) for pk in task_ids]},
        )


def _refused(error: actions.TaskRefused) -> Response:
    return Response({"detail": error.message, "code": error.code}, status=REFUSAL_STATUS.get(error.code, 409))


class ReadingTaskViewSet(viewsets.ReadOnlyModelViewSet):
    """Reading tasks: what is offered to me, what I hold, what I finished, my hospital's.

    Patient identity (``patient``, ``study``) is given only to those who may open
    the study: the hospital's own staff, or the reader who holds or signed it.
    """

    serializer_class = ReadingTaskSerializer
    pagination_class = WorklistPagination

    def get_queryset(self) -> QuerySet[ReadingTask]:
        if self.action == "list":
            self._reader = access.reader(self.request.user)
            return worklist_queryset(self.request.user, self.request.query_params, self._reader)
        return access.visible_tasks(self.request.user).select_related("institution", "claimed_by", "study__patient")

    def get_object(self) -> ReadingTask:
        return access.access_task(self.request.user, self.kwargs["pk"])

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if not hasattr(self, "_reader"):
            self._reader = access.reader(self.request.user)
        context["clinical_ids"] = self._reader.clinical
        return context

    @extend_schema(
        parameters=[
            OpenApiParameter("view", str, enum=list(VIEWS), description="offered (default), claimed, finished or all"),
            OpenApiParameter("priority", str, enum=[p.value for p in Priority]),
            OpenApiParameter("modality", str),
            OpenApiParameter("hospital", OpenApiTypes.UUID),
            OpenApiParameter("ordering", str, enum=list(ORDERINGS)),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        shown = [row["id"] for row in response.data["results"] if row["patient"] is not None]
        audit_patient_list(request._request, shown)
        return response

    @audit.records_refusal("workflow.readingtask.open_refused", object_type="workflow.readingtask", key="pk")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        task = self.get_object()
        data = self.get_serializer(task).data
        if data["patient"] is not None:
            actions.do_touch_task(task, acting_user=request.user, request=request._request, what="view")
        return Response(data)

    @extend_schema(request=None, responses={200: ReadingTaskSerializer, 403: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    @audit.records_refusal("workflow.readingtask.claim_refused", object_type="workflow.readingtask", key="pk")
    def claim(self, request: Request, pk: str | None = None) -> Response:
        """Claim the task: it is mine alone and I may open the study."""
        task = access.access_task(request.user, pk, to_claim=True)
        try:
            task = actions.do_claim_reading_task(task, acting_user=request.user, request=request._request)
        except actions.TaskRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(access.access_task(request.user, task.pk)).data)

    @extend_schema(request=ReleaseSerializer, responses={200: ReadingTaskSerializer, 409: Refusal})
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Give the task back to those it was offered to; my access to the study ends."""
        task = self.get_object()
        body = ReleaseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            task = actions.do_release_reading_task(task, acting_user=request.user, reason=body.validated_data["reason"])
        except actions.TaskRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(access.access_task(request.user, task.pk)).data)

    @extend_schema(request=ReassignSerializer, responses={200: ReadingTaskSerializer, 400: Refusal, 409: Refusal})
    @action(detail=True, methods=["post"])
    def reassign(self, request: Request, pk: str | None = None) -> Response:
        """An administrator of the hospital offers the task to one named radiologist."""
        task = self.get_object()
        if not access.can_manage_tasks(request.user, task):
            raise PermissionDenied("Only the hospital's administrators reassign its tasks.")
        body = ReassignSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        to_user = User.objects.filter(username=body.validated_data["user"], is_active=True).first()
        if to_user is None:
            raise ValidationError({"user": "no such active user"})
        try:
            task = actions.do_reassign_reading_task(
                task,
                acting_user=request.user,
                to_user=to_user,
                reason=body.validated_data["reason"],
                request=request._request,
            )
        except actions.TaskRefused as refused:
            return _refused(refused)
        return Response(self.get_serializer(access.access_task(request.user, task.pk)).data)

    @extend_schema(responses={200: TransitionSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str | None = None) -> Response:
        """Every state change of the task, with who and why."""
        task = self.get_object()
        rows = [
            {
                "time": t.time,
                "source": t.source,
                "target": t.target,
                "method": t.method,
                "actor": t.actor.username if t.actor else t.actor_label,
                "reason": t.reason,
            }
            for t in history(task)
        ]
        return Response(TransitionSerializer(rows, many=True).data)


# Pools, members, agreements -------------------------------------------------------


class _ManagedByOwner:
    """Writes need an administrator of the owning institution; the actions validate them."""

    request: Request

    def _require_admin(self, institution_id: Any) -> None:
        if institution_id not in access.admin_institutions(self.request.user):
            raise PermissionDenied("Only an administrator of the pool's institution may change it.")

    def _act(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a write action as the caller; its validation errors answer 400."""
        try:
            return action(*args, acting_user=self.request.user, request=self.request._request, **kwargs)
        except DjangoValidationError as error:
            raise ValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages) from None


class RadiologistPoolViewSet(_ManagedByOwner, viewsets.ModelViewSet):
    """Radiologist pools: read by their members, their owner and hospitals they read for; managed by the owner."""

    serializer_class = RadiologistPoolSerializer
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[RadiologistPool]:
        return access.visible_pools(self.request.user).prefetch_related("members__user", "members__credentialed_for")

    def get_object(self) -> RadiologistPool:
        return access.access_pool(self.request.user, self.kwargs["pk"])

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        owner = data.pop("owner")
        self._require_admin(owner.pk)
        serializer.instance = self._act(actions.do_create_pool, owner, **data)

    def perform_update(self, serializer: Any) -> None:
        self._require_admin(serializer.instance.owner_id)
        serializer.instance = self._act(actions.do_change_pool, serializer.instance, **serializer.validated_data)


class PoolMemberViewSet(_ManagedByOwner, viewsets.ModelViewSet):
    """Members of pools, their subspecialties, credentials and caps."""

    serializer_class = PoolMemberSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[PoolMember]:
        qs = PoolMember.objects.filter(pool__in=access.visible_pools(self.request.user)).select_related("user", "pool")
        if self.request.query_params.get("pool"):
            qs = qs.filter(pool=access.access_pool(self.request.user, self.request.query_params["pool"]))
        return qs.prefetch_related("credentialed_for")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # A pool you do not manage answers as a missing one does (404), before validation.
        access.access_pool(request.user, request.data.get("pool"), manage=True)
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        pool, user = data.pop("pool"), data.pop("user")
        self._require_admin(pool.owner_id)
        serializer.instance = self._act(actions.do_add_pool_member, pool, user, **data)

    def perform_update(self, serializer: Any) -> None:
        self._require_admin(serializer.instance.pool.owner_id)
        serializer.instance = self._act(actions.do_change_pool_member, serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance: PoolMember) -> None:
        self._require_admin(instance.pool.owner_id)
        self._act(actions.do_remove_pool_member, instance)


class ReadingAgreementViewSet(_ManagedByOwner, viewsets.ModelViewSet):
    """Which hospital sends what to which pool, with SLA terms; managed by the pool's owner."""

    serializer_class = ReadingAgreementSerializer
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[ReadingAgreement]:
        mine = core_access.institution_ids(self.request.user)
        return ReadingAgreement.objects.filter(Q(hospital_id__in=mine) | Q(pool__owner_id__in=mine)).select_related(
            "pool", "hospital"
        )

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        access.access_pool(request.user, request.data.get("pool"), manage=True)
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        pool, hospital = data.pop("pool"), data.pop("hospital")
        self._require_admin(pool.owner_id)
        serializer.instance = self._act(actions.do_create_reading_agreement, pool, hospital, **data)

    def perform_update(self, serializer: Any) -> None:
        self._require_admin(serializer.instance.pool.owner_id)
        serializer.instance = self._act(
            actions.do_change_reading_agreement, serializer.instance, **serializer.validated_data
        )


# Routing policies -----------------------------------------------------------------


class RoutingPolicyViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Versions of each hospital's routing policy. POST saves a new current version."""

    serializer_class = RoutingPolicySerializer

    def get_queryset(self) -> QuerySet[RoutingPolicy]:
        qs = access.visible_policies(self.request.user).select_related("created_by")
        if self.request.query_params.get("current"):
            qs = qs.filter(is_current=True)
        return qs

    def get_object(self) -> RoutingPolicy:
        return access.access_policy(self.request.user, self.kwargs["pk"])

    @extend_schema(responses={201: RoutingPolicySerializer, 400: OpenApiTypes.OBJECT})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # Only the hospital's administrators change its policy; any other
        # institution answers as a missing one does.
        if str(request.data.get("institution")) not in {str(i) for i in access.admin_institutions(request.user)}:
            raise Http404("No such institution")
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        institution = serializer.validated_data["institution"]
        try:
            row = actions.do_save_routing_policy(
                institution,
                serializer.validated_data["definition"],
                acting_user=request.user,
                name=serializer.validated_data.get("name", ""),
                note=serializer.validated_data.get("note", ""),
                request=request._request,
            )
        except policy.PolicyError as error:
            return Response({"definition": error.as_dict()}, status=status.HTTP_400_BAD_REQUEST)
        return Response(self.get_serializer(row).data, status=status.HTTP_201_CREATED)

    def _dry_run(self, request: Request, institution: Institution, parsed: policy.Policy | None) -> Response:
        body = DryRunRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if "study" in data:
            study = Study.objects.filter(pk=data["study"], institution=institution).select_related("patient").first()
            if study is None:
                raise Http404("No such study at this hospital")
            facts = study_facts(study)
        else:
            raw = data["facts"]
            facts = policy.StudyFacts(
                modality=raw["modality"].upper(),
                modalities=[raw["modality"].upper()] if raw["modality"] else [],
                body_part=raw["body_part"].upper(),
                procedure_code=raw["procedure_code"].upper(),
                priority=raw["priority"],
                patient_age=raw["patient_age"],
            )
        if data.get("priority"):
            facts.priority = data["priority"]
        return Response(policy.dry_run(parsed, institution, facts, data.get("at")))

    @extend_schema(request=DryRunRequestSerializer, responses={200: DryRunResultSerializer})
    @action(detail=True, methods=["post"], url_path="dry-run")
    def dry_run(self, request: Request, pk: str | None = None) -> Response:
        """Which rule a study matches under this version and the whole path it would take."""
        row = self.get_object()
        return self._dry_run(request, row.institution, actions.parsed_policy(row))

    @extend_schema(
        operation_id="routing_policies_dry_run_draft",
        request=DryRunRequestSerializer,
        responses={200: DryRunResultSerializer, 400: OpenApiTypes.OBJECT},
    )
    @action(detail=False, methods=["post"], url_path="dry-run")
    def dry_run_draft(self, request: Request) -> Response:
        """Try a draft definition (``definition`` and ``institution``) before saving it."""
        institution_id = request.data.get("institution")
        if str(institution_id) not in {str(i) for i in access.admin_institutions(request.user)}:
            raise Http404("No such institution")
        institution = get_object_or_404(Institution, pk=institution_id)
        try:
            parsed = policy.validate(request.data.get("definition"), institution)
        except policy.PolicyError as error:
            return Response({"definition": error.as_dict()}, status=status.HTTP_400_BAD_REQUEST)
        return self._dry_run(request, institution, parsed)

    @extend_schema(responses={(200, "image/svg+xml"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def diagram(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The policy drawn as a flow diagram (SVG)."""
        row = self.get_object()
        return HttpResponse(diagram.render(row), content_type="image/svg+xml")
