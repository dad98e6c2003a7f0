"""The statistics page (charts as SVG, a table under each) and each chart's CSV download."""

from __future__ import annotations

import csv
import io
import time
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.safestring import mark_safe

from pacs_cloud import audit
from pacs_cloud.models import Institution
from pacs_cloud.tenancy import current_institution

from ..models import Priority
from . import svg
from .access import BadFilter, access_scope, admin_institutions, owned_pools, parse_filters
from .figures import CHARTS, Chart, Filters, Scope, batch_for, charts_for
from .rollups import rollup_days


def audit_view(request: HttpRequest, scope: Scope, filters: Filters, what: str) -> None:
    audit.record(
        "workflow.statistics.view",
        request=request,
        institution=scope.institution or (scope.pool.owner if scope.pool else None),
        object_type="workflow.statistics",
        object_id=what,
        detail={"scope": scope.kind, **scope.query(), **filters.query()},
    )


def _params(request: HttpRequest) -> Any:
    """The query, with the page's one ``scope`` choice (``institution=<id>``, ``pool=<id>`` or all) unpacked."""
    params = request.GET.copy()
    if "scope" in params:
        key, _, value = params.pop("scope")[0].partition("=")
        params.pop("institution", None)
        params.pop("pool", None)
        if key in {"institution", "pool"} and value:
            params[key] = value
        else:
            params["platform"] = "1"
    return params


def _scope(request: HttpRequest) -> Scope:
    return access_scope(request.user, _params(request), preferred=current_institution(request))


def _heading(column: Any) -> str:
    return f"{column.label} ({column.unit})" if column.unit else column.label


@login_required
def statistics_page(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    scope = _scope(request)
    error = ""
    try:
        filters = parse_filters(scope, _params(request))
    except BadFilter as bad:
        error = str(bad)
        filters = parse_filters(scope, {})
    query = {**scope.query(), **filters.query()}
    figures: list[dict[str, Any]] = []
    batch = batch_for(scope, filters)
    for chart in charts_for(scope):
        rows = chart.compute(scope, filters, batch)
        figures.append(
            {
                "chart": chart,
                "rows": rows,
                # Plain strings: the template's number localisation costs more than the figures.
                "cells": [
                    ["—" if row.get(c.key) is None else str(row.get(c.key)) for c in chart.shown] for row in rows
                ],
                "headings": [_heading(c) for c in chart.shown],
                "svg": mark_safe(svg.draw(chart, rows)),  # noqa: S308 - every text in it is escaped by svg
                "csv": f"{chart.slug}.csv?{urlencode(query)}",
            }
        )
    audit_view(request, scope, filters, "page")
    platform = bool(getattr(request.user, "is_platform_admin", False))
    scopes = [("", "All institutions")] if platform else []
    # The platform administrator may open any institution's figures (without names of staff).
    institutions = Institution.objects.order_by("name") if platform else admin_institutions(request.user)
    scopes += [(f"institution={i.pk}", i.name) for i in institutions]
    scopes += [(f"pool={p.pk}", f"Pool: {p.name}") for p in owned_pools(request.user)]
    current = urlencode(scope.query())
    modalities = sorted({r["key"] for f in figures if f["chart"].slug == "volume-by-modality" for r in f["rows"]})
    if filters.modality and filters.modality not in modalities:
        modalities.append(filters.modality)
    return render(
        request,
        "workflow/statistics.html",
        {
            "scope": scope,
            "filters": filters,
            "figures": figures,
            "error": error,
            "scopes": scopes,
            "current_scope": current,
            "modalities": modalities,
            "priorities": Priority.choices,
            "approximate": bool(batch is not None and batch.approximate),
            "rollup_days": rollup_days(),
            "server_ms": round((time.perf_counter() - started) * 1000),
        },
    )


def csv_response(chart: Chart, scope: Scope, filters: Filters, rows: list[dict[str, Any]]) -> HttpResponse:
    """UTF-8 with a byte-order mark, so Excel reads Chinese names right."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    columns = chart.shown
    writer.writerow([_heading(c) for c in columns])
    for row in rows:
        writer.writerow(["" if row.get(c.key) is None else row.get(c.key) for c in columns])
    stamp = timezone.now().astimezone(scope.zone).strftime("%Y%m%d")
    response = HttpResponse(out.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8")
    name = f"{chart.slug}_{filters.date_from:%Y%m%d}-{filters.date_to:%Y%m%d}_{stamp}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def chart_csv(slug: str) -> Any:
    @login_required
    def view(request: HttpRequest) -> HttpResponse:
        scope = _scope(request)
        chart = CHARTS[slug]
        if chart not in charts_for(scope):
            raise Http404("No such chart here")
        try:
            filters = parse_filters(scope, request.GET)
        except BadFilter as bad:
            return HttpResponse(str(bad), status=400, content_type="text/plain; charset=utf-8")
        rows = chart.compute(scope, filters)
        audit_view(request, scope, filters, f"{slug}.csv")
        return csv_response(chart, scope, filters, rows)

    view.__name__ = f"chart_csv_{slug.replace('-', '_')}"
    return view
