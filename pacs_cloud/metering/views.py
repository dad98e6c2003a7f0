"""Usage pages: an institution's monthly statement (HTML, CSV, PDF), the platform's overview and price list.

An institution administrator reads their institution's statements; the
platform administrator reads every institution's, the overview of all
tenants and edits the price list. Everyone else gets a 404, audited as a
refusal; every statement read is audited.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from .. import audit
from ..access import institution_ids
from ..models import Institution, Role
from ..tenancy import current_institution
from . import counters
from .access import access_statement_institution, is_platform_admin, require_platform_admin
from .actions import do_set_prices
from .documents import money, period, quantity, statement_csv, statement_pdf, unit_price
from .models import CURRENCY, PRICE_ITEMS, Price
from .statements import Statement, current_month, month_label, parse_month, price_list, statement, statements


def _month(text: str) -> dt.date:
    try:
        return parse_month(text)
    except ValueError:
        raise Http404("No such month") from None


def _statement(request: HttpRequest, institution_id: Any, month: str, shown_as: str) -> Statement:
    institution = access_statement_institution(request.user, institution_id)
    wanted = _month(month)
    counters.flush()  # what this process counted a moment ago is in the figures
    found = statement(institution, wanted)
    audit.record(
        "usage.statement.view",
        request=request,
        institution=institution,
        object_type="usage.statement",
        object_id=f"{institution.pk}:{found.label}",
        detail={"month": found.label, "format": shown_as, "total": str(found.total)},
    )
    return found


def _months_before(month: dt.date, count: int = 12) -> list[str]:
    found = []
    for _ in range(count):
        found.append(month_label(month))
        month = (month - dt.timedelta(days=1)).replace(day=1)
    return found


@login_required
def usage_home(request: HttpRequest) -> HttpResponse:
    """The current month: the overview for the platform administrator, the own statement for an institution's."""
    if is_platform_admin(request.user):
        return redirect("pacs_cloud-view-usage-overview", month=month_label(current_month()))
    administered = institution_ids(request.user, [Role.INSTITUTION_ADMIN])
    if not administered:
        raise Http404("No such page")
    current = current_institution(request)
    chosen = current.pk if current is not None and current.pk in administered else sorted(administered, key=str)[0]
    institution = Institution.objects.get(pk=chosen)
    return redirect(
        "pacs_cloud-view-usage-statement", institution_id=institution.pk, month=month_label(current_month(institution))
    )


@login_required
@audit.records_refusal("usage.statement.view_refused", object_type="usage.statement", key="institution_id")
def statement_page(request: HttpRequest, institution_id: Any, month: str) -> HttpResponse:
    found = _statement(request, institution_id, month, "html")
    return render(
        request,
        "pacs_cloud/usage_statement.html",
        {
            "statement": found,
            "period": period(found),
            "rows": [
                {
                    "line": line,
                    "quantity": quantity(line.quantity),
                    "unit_price": unit_price(line.unit_price),
                    "amount": money(line.amount),
                }
                for line in found.lines
            ],
            "total": money(found.total),
            "months": _months_before(current_month(found.institution)),
            "overview": is_platform_admin(request.user),
        },
    )


@login_required
@audit.records_refusal("usage.statement.view_refused", object_type="usage.statement", key="institution_id")
def statement_csv_view(request: HttpRequest, institution_id: Any, month: str) -> HttpResponse:
    found = _statement(request, institution_id, month, "csv")
    response = HttpResponse(statement_csv(found), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{found.institution.slug}-{found.label}.csv"'
    return response


@login_required
@audit.records_refusal("usage.statement.view_refused", object_type="usage.statement", key="institution_id")
def statement_pdf_view(request: HttpRequest, institution_id: Any, month: str) -> HttpResponse:
    found = _statement(request, institution_id, month, "pdf")
    response = HttpResponse(statement_pdf(found), content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="usage-{found.institution.slug}-{found.label}.pdf"'
    return response


@login_required
def overview(request: HttpRequest, month: str) -> HttpResponse:
    """Every tenant's usage and total for one month (the platform administrator's)."""
    require_platform_admin(request.user)
    wanted = _month(month)
    counters.flush()
    found = statements(Institution.objects.order_by("name"), wanted)
    audit.record("usage.overview.view", request=request, object_type="usage.overview", object_id=month_label(wanted))
    return render(
        request,
        "pacs_cloud/usage_overview.html",
        {
            "month": month_label(wanted),
            "months": _months_before(current_month()),
            "statements": [
                {
                    "statement": s,
                    "studies": quantity(s.quantity("studies_received")),
                    "instances": quantity(s.quantity("instances_received")),
                    "rendered": quantity(s.quantity("images_rendered")),
                    "reads": quantity(s.quantity("reads")),
                    "signed": quantity(s.quantity("reports_signed")),
                    "storage": quantity(
                        s.quantity("storage_online") + s.quantity("storage_nearline") + s.quantity("storage_archive")
                    ),
                    "bought": quantity(s.quantity("pool_readings_bought")),
                    "sold": quantity(s.quantity("pool_readings_sold")),
                    "total": money(s.total),
                }
                for s in found
            ],
            "grand_total": money(sum((s.total for s in found), Decimal("0.00"))),
            "currency": CURRENCY,
        },
    )


@login_required
def prices(request: HttpRequest) -> HttpResponse:
    """The platform's price list: every item's unit price (CNY), editable by the platform administrator."""
    require_platform_admin(request.user)
    errors: dict[str, str] = {}
    if request.method == "POST":
        wanted: dict[str, Decimal] = {}
        for item in PRICE_ITEMS:
            text = str(request.POST.get(item, "")).strip()
            try:
                value = Decimal(text)
                if not value.is_finite() or abs(value) >= 10**8 or value.as_tuple().exponent < -4:  # type: ignore[operator]
                    raise InvalidOperation
                wanted[item] = value
            except InvalidOperation:
                errors[item] = "Enter a price with at most 4 decimal places."
        if not errors:
            changed = do_set_prices(wanted, acting_user=request.user, request=request)
            messages.success(request, f"Price list saved ({len(changed)} changed).")
            return redirect(reverse("pacs_cloud-edit-usage-prices"))
    current = price_list()
    changed_at = {p.item: p for p in Price.objects.select_related("updated_by")}
    return render(
        request,
        "pacs_cloud/usage_prices.html",
        {
            "rows": [
                {
                    "item": item,
                    "label": label,
                    "unit": unit,
                    "price": request.POST.get(item, unit_price(current[item])) if errors else unit_price(current[item]),
                    "default": unit_price(default),
                    "error": errors.get(item, ""),
                    "changed": changed_at.get(item),
                }
                for item, (label, unit, default) in PRICE_ITEMS.items()
            ],
            "currency": CURRENCY,
        },
    )
