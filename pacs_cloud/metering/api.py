"""The usage API: an institution's monthly statement, the overview of every tenant, the price list.

Same figures and access as the pages: an institution administrator reads
their own statements, the platform administrator everything and edits the
prices; anyone else gets a 404.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import audit
from ..models import Institution
from . import counters
from .access import access_statement_institution, require_platform_admin
from .actions import do_set_prices
from .models import CURRENCY, PRICE_ITEMS
from .statements import Statement, parse_month, price_list, statement, statements

_NOT_FOUND = OpenApiResponse(description="No such institution or month, or not yours")


class StatementLineSerializer(serializers.Serializer):
    item = serializers.ChoiceField(choices=list(PRICE_ITEMS))
    label = serializers.CharField()
    detail = serializers.CharField(help_text="The site of a storage line; the other institution of a pool reading.")
    unit = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=20, decimal_places=3, coerce_to_string=True)
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=True)
    amount = serializers.DecimalField(max_digits=16, decimal_places=2, coerce_to_string=True)


class LocalDateTimeField(serializers.DateTimeField):
    """An instant as the institution's clock reads it, with its offset (``2026-02-01T00:00:00+08:00``)."""

    def to_representation(self, value: Any) -> str:
        return value.isoformat()


class StatementSerializer(serializers.Serializer):
    institution_id = serializers.UUIDField(source="institution.pk")
    institution_name = serializers.CharField(source="institution.name")
    time_zone = serializers.CharField(source="institution.time_zone")
    month = serializers.CharField(source="label", help_text="YYYY-MM, in the institution's time zone")
    starts_at = LocalDateTimeField(help_text="The month's first instant (the institution's midnight)")
    ends_at = LocalDateTimeField(help_text="The first instant after the month")
    currency = serializers.CharField()
    lines = StatementLineSerializer(many=True)
    total = serializers.DecimalField(max_digits=16, decimal_places=2, coerce_to_string=True)


class OverviewSerializer(serializers.Serializer):
    month = serializers.CharField()
    currency = serializers.CharField()
    total = serializers.DecimalField(max_digits=18, decimal_places=2, coerce_to_string=True)
    statements = StatementSerializer(many=True)


class PriceSerializer(serializers.Serializer):
    item = serializers.ChoiceField(choices=list(PRICE_ITEMS))
    label = serializers.CharField(read_only=True)
    unit = serializers.CharField(read_only=True)
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=True)
    default = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=True, read_only=True)


class PriceListSerializer(serializers.Serializer):
    currency = serializers.CharField(read_only=True)
    prices = PriceSerializer(many=True)


def _month(text: str) -> Any:
    try:
        return parse_month(text)
    except ValueError:
        raise Http404("No such month") from None


def _price_list() -> dict[str, Any]:
    current = price_list()
    return {
        "currency": CURRENCY,
        "prices": [
            {"item": item, "label": label, "unit": unit, "unit_price": current[item], "default": default}
            for item, (label, unit, default) in PRICE_ITEMS.items()
        ],
    }


class StatementView(APIView):
    """One institution's usage statement for one month (its time zone), priced."""

    @extend_schema(
        responses={200: StatementSerializer, 404: _NOT_FOUND}, tags=["usage"], operation_id="usage_statement"
    )
    @audit.records_refusal("usage.statement.view_refused", object_type="usage.statement", key="institution_id")
    def get(self, request: Request, institution_id: str, month: str) -> Response:
        institution = access_statement_institution(request.user, institution_id)
        counters.flush()
        found: Statement = statement(institution, _month(month))
        audit.record(
            "usage.statement.view",
            request=request._request,
            institution=institution,
            object_type="usage.statement",
            object_id=f"{institution.pk}:{found.label}",
            detail={"month": found.label, "format": "api", "total": str(found.total)},
        )
        return Response(StatementSerializer(found).data)


class OverviewView(APIView):
    """Every tenant's statement for one month (the platform administrator's)."""

    @extend_schema(responses={200: OverviewSerializer, 404: _NOT_FOUND}, tags=["usage"], operation_id="usage_overview")
    def get(self, request: Request, month: str) -> Response:
        require_platform_admin(request.user)
        wanted = _month(month)
        counters.flush()
        found = statements(Institution.objects.order_by("name"), wanted)
        audit.record("usage.overview.view", request=request._request, object_type="usage.overview", object_id=month)
        body = {
            "month": month,
            "currency": CURRENCY,
            "total": sum((s.total for s in found), Decimal("0.00")),
            "statements": found,
        }
        return Response(OverviewSerializer(body).data)


class PriceListView(APIView):
    """The platform's price list (CNY per unit). Everyone signed in reads it; the platform administrator sets it."""

    @extend_schema(responses={200: PriceListSerializer}, tags=["usage"], operation_id="usage_prices")
    def get(self, request: Request) -> Response:
        return Response(PriceListSerializer(_price_list()).data)

    @extend_schema(
        request=PriceListSerializer,
        responses={200: PriceListSerializer, 404: OpenApiResponse(description="Not the platform administrator")},
        tags=["usage"],
        operation_id="usage_prices_update",
    )
    def put(self, request: Request) -> Response:
        require_platform_admin(request.user)
        incoming = PriceListSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        wanted = {p["item"]: p["unit_price"] for p in incoming.validated_data["prices"]}
        do_set_prices(wanted, acting_user=request.user, request=request._request)
        return Response(PriceListSerializer(_price_list()).data)
