"""REST API: ``/api/v1/orders/``, the catalogue and the reconciliation queue."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils.dateparse import parse_date
from django_fsm import TransitionNotAllowed
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from pacs_cloud import audit
from pacs_cloud.access import IsTechnologist, access_institution
from pacs_cloud.models import Institution, Role

from . import actions
from .access import (
    IsClinicalOrTechnologist,
    access_order,
    access_reconciliation_item,
    technologist_institution_ids,
    visible_orders,
    visible_procedures,
    visible_reconciliation,
    visible_stations,
)
from .models import Order, Procedure, Station
from .serializers import (
    CorrectPatientSerializer,
    DismissSerializer,
    LinkSerializer,
    OrderCreateSerializer,
    OrderEditSerializer,
    OrderSerializer,
    ProcedureSerializer,
    ReasonSerializer,
    ReconciliationItemSerializer,
    StationSerializer,
)


def _invalid(exc: ValidationError) -> ApiValidationError:
    if hasattr(exc, "error_dict"):
        return ApiValidationError({k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()})
    return ApiValidationError({"detail": exc.messages})


def _is_possible_duplicate(exc: ValidationError) -> bool:
    return hasattr(exc, "error_dict") and any(e.code == "possible_duplicate" for e in exc.error_dict.get("name", []))


def _technologist_institution(request: Request, wanted: Any) -> Institution:
    if wanted:
        return access_institution(request.user, wanted, Role.TECHNOLOGIST)
    ids = technologist_institution_ids(request.user)
    if len(ids) != 1:
        raise ApiValidationError({"institution": "You work at several institutions: say which."})
    return Institution.objects.get(pk=next(iter(ids)))


def _catalogue_item(model: Any, institution: Institution, pk: Any, field: str) -> Any:
    item = model.objects.filter(institution=institution, pk=pk).first()
    if item is None:
        raise ApiValidationError({field: "Not in this institution's catalogue."})
    return item


ORDER_FILTERS = [
    OpenApiParameter("date", str, description="Scheduled local date, YYYY-MM-DD"),
    OpenApiParameter("state", str, description="Comma-separated states"),
    OpenApiParameter("station", str, description="Station id"),
    OpenApiParameter("patient_id", str),
    OpenApiParameter("accession_number", str),
    OpenApiParameter("institution", str),
]


class OrderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Exam orders: registered by technologists, visible to the institution's clinical staff."""

    serializer_class = OrderSerializer
    permission_classes = [IsClinicalOrTechnologist]

    def get_queryset(self) -> QuerySet[Order]:
        qs = visible_orders(self.request.user).select_related("patient", "procedure", "station__node", "institution")
        params = self.request.query_params
        if day := params.get("date"):
            parsed = parse_date(day)
            if parsed is None:
                raise ApiValidationError({"date": "Use YYYY-MM-DD."})
            qs = qs.filter(scheduled_date=parsed)
        if states := params.get("state"):
            qs = qs.filter(state__in=states.split(","))
        for param, lookup in (
            ("station", "station_id"),
            ("patient_id", "patient__patient_id"),
            ("accession_number", "accession_number"),
            ("institution", "institution_id"),
        ):
            if value := params.get(param):
                qs = qs.filter(**{lookup: value})
        return qs.order_by("scheduled_at", "accession_number")

    @extend_schema(parameters=ORDER_FILTERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            response = super().list(request, *args, **kwargs)
        except (ValueError, ValidationError):
            raise ApiValidationError({"detail": "A filter value is malformed."}) from None
        audit.record("worklist.order.list", request=request._request, detail={"query": dict(request.query_params)})
        return response

    def get_object(self) -> Order:
        order = access_order(self.request.user, self.kwargs["pk"], change=self.request.method not in ("GET", "HEAD"))
        return order

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        order = self.get_object()
        audit.record(
            "worklist.order.view",
            request=request._request,
            institution=order.institution_id,
            object_type="worklist.order",
            object_id=order.pk,
            patient_id=order.patient.patient_id,
        )
        return Response(OrderSerializer(order).data)

    @extend_schema(request=OrderCreateSerializer, responses={201: OrderSerializer})
    def create(self, request: Request) -> Response:
        """Register an exam (and its patient, found first by id or patient_id)."""
        if not IsTechnologist().has_permission(request, self):
            raise PermissionDenied("Only technologists register exams.")
        data = OrderCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        institution = _technologist_institution(request, values.get("institution"))
        procedure = _catalogue_item(Procedure, institution, values["procedure"], "procedure")
        station = _catalogue_item(Station, institution, values["station"], "station")
        who = values["patient"]
        try:
            patient = actions.do_find_or_register_patient(
                institution,
                pk=who.get("id"),
                patient_id=who.get("patient_id", ""),
                name=who.get("name", ""),
                birth_date=who.get("birth_date"),
                sex=who.get("sex", ""),
                actor=request.user,
                request=request._request,
                allow_possible_duplicate=who.get("allow_possible_duplicate", False),
            )
            order = actions.do_create_order(
                institution,
                patient=patient,
                procedure=procedure,
                station=station,
                scheduled_at=values["scheduled_at"],
                priority=values["priority"],
                referring_physician=values["referring_physician"],
                clinical_info=values["clinical_info"],
                actor=request.user,
                request=request._request,
            )
        except ValidationError as exc:
            if _is_possible_duplicate(exc):
                duplicates = actions.likely_duplicates(institution, who.get("name", ""), who.get("birth_date"))
                return Response(
                    {
                        "detail": "A patient with this name and birth date is registered: give their id, "
                        "or set allow_possible_duplicate.",
                        "candidates": [
                            {"id": str(p.pk), "patient_id": p.patient_id, "name": p.name} for p in duplicates
                        ],
                    },
                    status=status.HTTP_409_CONFLICT,
                )
            raise _invalid(exc) from None
        return Response(OrderSerializer(order).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=OrderEditSerializer, responses=OrderSerializer)
    def partial_update(self, request: Request, pk: Any = None) -> Response:
        """Change an order: rescheduling only before the exam starts."""
        order = self.get_object()
        data = OrderEditSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        if "procedure" in changes:
            changes["procedure"] = _catalogue_item(Procedure, order.institution, changes["procedure"], "procedure")
        if "station" in changes:
            changes["station"] = _catalogue_item(Station, order.institution, changes["station"], "station")
        try:
            order = actions.do_edit_order(order, changes=changes, actor=request.user, request=request._request)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return Response(OrderSerializer(access_order(request.user, order.pk)).data)

    def _act(self, request: Request, do: Any) -> Response:
        order = self.get_object()
        try:
            order = do(order)
        except ValidationError as exc:
            raise _invalid(exc) from None
        except TransitionNotAllowed:
            return Response(
                {"detail": f"Not possible while the order is {order.get_state_display().lower()}."},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(OrderSerializer(access_order(request.user, order.pk)).data)

    @extend_schema(request=None, responses=OrderSerializer)
    @action(detail=True, methods=["post"])
    def arrive(self, request: Request, pk: Any = None) -> Response:
        """The patient has arrived at the department."""
        return self._act(request, lambda o: actions.do_arrive_order(o, actor=request.user))

    @extend_schema(request=ReasonSerializer, responses=OrderSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: Any = None) -> Response:
        """Cancel an order that has not started; a reason is required."""
        body = ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._act(
            request, lambda o: actions.do_cancel_order(o, reason=body.validated_data["reason"], actor=request.user)
        )

    @extend_schema(request=ReasonSerializer, responses=OrderSerializer)
    @action(detail=True, methods=["post"])
    def discontinue(self, request: Request, pk: Any = None) -> Response:
        """Stop an exam in progress that will not be finished; a reason is required."""
        body = ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._act(
            request, lambda o: actions.do_discontinue_order(o, reason=body.validated_data["reason"], actor=request.user)
        )


class ProcedureViewSet(viewsets.ReadOnlyModelViewSet):
    """The procedure catalogues of the caller's institutions."""

    serializer_class = ProcedureSerializer
    permission_classes = [IsClinicalOrTechnologist]

    def get_queryset(self) -> QuerySet[Procedure]:
        return visible_procedures(self.request.user).filter(is_active=True).order_by("modality", "name")


class StationViewSet(viewsets.ReadOnlyModelViewSet):
    """The modality stations of the caller's institutions."""

    serializer_class = StationSerializer
    permission_classes = [IsClinicalOrTechnologist]

    def get_queryset(self) -> QuerySet[Station]:
        return visible_stations(self.request.user).filter(is_active=True).order_by("name")


class ReconciliationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Studies that matched no order, for the institution's technologists."""

    serializer_class = ReconciliationItemSerializer
    permission_classes = [IsTechnologist]

    def get_queryset(self) -> Any:
        qs = visible_reconciliation(self.request.user).select_related("study__patient")
        if self.request.query_params.get("open", "1") != "0":
            qs = qs.filter(resolved_at__isnull=True)
        return qs.order_by("created_at")

    def get_object(self) -> Any:
        return access_reconciliation_item(self.request.user, self.kwargs["pk"])

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        audit.record("worklist.reconciliation.list", request=request._request)
        return response

    @extend_schema(request=LinkSerializer, responses=OrderSerializer)
    @action(detail=True, methods=["post"])
    def link(self, request: Request, pk: Any = None) -> Response:
        """Link the study to one of the institution's orders."""
        item = self.get_object()
        body = LinkSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        order = (
            visible_orders(request.user)
            .filter(institution_id=item.institution_id, pk=body.validated_data["order"])
            .first()
        )
        if order is None:
            raise NotFound("No such order at this institution.")
        try:
            order = actions.do_link_study(
                item.study, order, actor=request.user, reason="linked by a technologist", request=request._request
            )
        except ValidationError as exc:
            raise _invalid(exc) from None
        return Response(OrderSerializer(access_order(request.user, order.pk)).data)

    @extend_schema(request=CorrectPatientSerializer, responses=ReconciliationItemSerializer)
    @action(detail=True, methods=["post"])
    def correct(self, request: Request, pk: Any = None) -> Response:
        """Correct the patient the study was received under, then match it to its exam again."""
        item = self.get_object()
        body = CorrectPatientSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if item.resolved_at is not None:
            raise ApiValidationError({"detail": "This study has already been reconciled."})
        try:
            actions.do_correct_study_patient(item, actor=request.user, request=request._request, **body.validated_data)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return Response(ReconciliationItemSerializer(get_object_or_404(type(item), pk=item.pk)).data)

    @extend_schema(request=DismissSerializer, responses=ReconciliationItemSerializer)
    @action(detail=True, methods=["post"])
    def dismiss(self, request: Request, pk: Any = None) -> Response:
        """Close the item: the study needs no order."""
        item = self.get_object()
        body = DismissSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            actions.do_dismiss_reconciliation(
                item, note=body.validated_data["note"], actor=request.user, request=request._request
            )
        except ValidationError as exc:
            raise _invalid(exc) from None
        return Response(ReconciliationItemSerializer(get_object_or_404(type(item), pk=item.pk)).data)
