"""The statistics at ``/api/v1/statistics/<chart>/``: the page's figures as typed JSON."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pacs_cloud.tenancy import current_institution

from .access import BadFilter, access_scope, parse_filters
from .figures import CHARTS, STAGES, Chart, charts_for, rollup_for
from .views import audit_view


class _Row(serializers.Serializer):
    key = serializers.CharField(help_text="The group: a code, a day, a time or an opaque id.")
    label = serializers.CharField(help_text="The group's name as the page shows it.")


def _minutes() -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text="Minutes; null without data.")


APPROXIMATE = (
    "Minutes; null without data. Approximate when `approximate` is true (a range of more than "
    "STATISTICS_ROLLUP_DAYS days without a modality or priority filter): read from the daily rollups' "
    "histograms, within one bucket (about 20 %) of the exact value."
)


def _percentile() -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=APPROXIMATE)


class VolumeRowSerializer(_Row):
    studies = serializers.IntegerField()


class TurnaroundRowSerializer(_Row):
    studies = serializers.IntegerField()
    signed = serializers.IntegerField()


for _name, _label, *_ in STAGES:
    TurnaroundRowSerializer._declared_fields[f"{_name}_median"] = _percentile()
    TurnaroundRowSerializer._declared_fields[f"{_name}_p90"] = _percentile()


class SlaRowSerializer(_Row):
    offered = serializers.IntegerField()
    signed = serializers.IntegerField()
    met = serializers.IntegerField(help_text="Signed within the first offer's SLA.")
    breached = serializers.IntegerField()
    escalated = serializers.IntegerField(help_text="Studies escalated at least once.")
    escalations = serializers.IntegerField()
    compliance = serializers.FloatField(allow_null=True, help_text="Percent met of met plus breached.")


class WorkloadRowSerializer(_Row):
    studies = serializers.IntegerField(help_text="Studies signed.")
    weighted = serializers.FloatField(help_text="Studies signed, weighted by modality.")


class ReferralRowSerializer(_Row):
    referrals = serializers.IntegerField()
    accepted = serializers.IntegerField()
    declined = serializers.IntegerField()
    pending = serializers.IntegerField()
    response_median = _minutes()
    response_p90 = _minutes()


class EdgeBacklogRowSerializer(_Row):
    edge = serializers.UUIDField()
    outbox_depth = serializers.IntegerField()
    oldest_minutes = _minutes()


ROWS: dict[str, type[serializers.Serializer]] = {
    "volume": VolumeRowSerializer,
    "turnaround": TurnaroundRowSerializer,
    "sla": SlaRowSerializer,
    "workload": WorkloadRowSerializer,
    "referrals": ReferralRowSerializer,
    "edge": EdgeBacklogRowSerializer,
}


def row_kind(slug: str) -> str:
    return slug.split("-")[0]


# Whose figures a chart holds (named StatisticsScopeEnum in the API schema).
SCOPES = ["institution", "pool", "platform"]


def _envelope(kind: str) -> type[serializers.Serializer]:
    name = f"Statistics{kind.title()}Serializer"
    fields: dict[str, Any] = {
        "chart": serializers.CharField(),
        "title": serializers.CharField(),
        "scope": serializers.ChoiceField(choices=SCOPES),
        "scope_name": serializers.CharField(),
        "time_zone": serializers.CharField(help_text="Days and times are local to this zone."),
        "date_from": serializers.DateField(),
        "date_to": serializers.DateField(),
        "approximate": serializers.BooleanField(
            help_text="Whether the percentiles were read from the daily rollups' histograms (approximate)."
        ),
        "rows": ROWS[kind](many=True),
    }
    return type(name, (serializers.Serializer,), fields)


ENVELOPES = {kind: _envelope(kind) for kind in ROWS}

PARAMETERS = [
    OpenApiParameter("institution", OpenApiTypes.UUID, description="An institution you administer."),
    OpenApiParameter("pool", OpenApiTypes.UUID, description="A pool your institution owns: what it read."),
    OpenApiParameter("from", OpenApiTypes.DATE, description="First local day (default: 29 days before `to`)."),
    OpenApiParameter("to", OpenApiTypes.DATE, description="Last local day (default: today)."),
    OpenApiParameter("modality", OpenApiTypes.STR, description="Only this modality, e.g. CT."),
    OpenApiParameter("priority", OpenApiTypes.STR, enum=["stat", "urgent", "routine"]),
]


class StatisticsView(APIView):
    """One chart's figures for a scope (an institution, a pool, or every institution for the platform)."""

    permission_classes = [IsAuthenticated]
    chart: Chart

    def get(self, request: Request) -> Response:
        scope = access_scope(request.user, request.query_params, preferred=current_institution(request))
        if self.chart not in charts_for(scope):
            raise Http404("No such chart here")
        try:
            filters = parse_filters(scope, request.query_params)
        except BadFilter as bad:
            raise ValidationError({"detail": str(bad)}) from None
        # One chart: its own grouped query, not the page's scan for every chart.
        rows = self.chart.compute(scope, filters)
        audit_view(request._request, scope, filters, f"api:{self.chart.slug}")
        body = {
            "chart": self.chart.slug,
            "title": self.chart.title,
            "scope": scope.kind,
            "scope_name": scope.name,
            "time_zone": scope.time_zone,
            "date_from": filters.date_from,
            "date_to": filters.date_to,
            "approximate": row_kind(self.chart.slug) == "turnaround" and rollup_for(scope, filters) is not None,
            "rows": rows,
        }
        return Response(ENVELOPES[row_kind(self.chart.slug)](body).data)


def view_for(chart: Chart) -> Any:
    kind = row_kind(chart.slug)
    name = "".join(part.title() for part in chart.slug.split("-")) + "StatisticsView"
    decorated = extend_schema(
        summary=chart.title,
        description=chart.note or chart.title,
        parameters=PARAMETERS,
        responses=ENVELOPES[kind],
        operation_id=f"statistics_{chart.slug.replace('-', '_')}",
        tags=["statistics"],
    )

    # A function of its own per chart: the schema annotation is stored on the function.
    def get(self: StatisticsView, request: Request) -> Response:
        return StatisticsView.get(self, request)

    attrs = {"chart": chart, "get": decorated(get), "__doc__": f"{chart.title}. {chart.note}".strip()}
    view: type[StatisticsView] = type(name, (StatisticsView,), attrs)
    return view.as_view()


VIEWS = {slug: view_for(chart) for slug, chart in CHARTS.items()}
