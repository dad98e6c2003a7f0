"""Monthly usage statements: the counters of one month, priced with the platform's price list.

A month is the institution's calendar month: its counters are kept per local
day, so the sum of the days from the 1st to the last is exactly the usage
between two local midnights (for Asia/Shanghai, from 16:00 UTC on the last
day of the month before). Storage is billed in GB-months: each day's snapshot
in GB (10^9 bytes), summed over the month, divided by the month's days.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

from django.db.models import Sum
from django.utils import timezone

from ..lib.local_time import zone
from ..models import Institution
from .counters import local_day
from .models import CURRENCY, PRICE_ITEMS, Metric, Price, UsageCounter

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
CENT = Decimal("0.01")
GB = Decimal(10**9)
QUANTITY_PLACES = Decimal("0.001")

# The lines every statement shows, even at zero, in this order.
COUNTED = (
    Metric.STUDIES_RECEIVED,
    Metric.INSTANCES_RECEIVED,
    Metric.IMAGES_RENDERED,
    Metric.READS,
    Metric.REPORTS_SIGNED,
)


def parse_month(text: str) -> dt.date:
    """``2026-02`` → 2026-02-01; ValueError for anything else."""
    found = MONTH.match(text or "")
    if not found:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)")
    return dt.date(int(found[1]), int(found[2]), 1)


def month_label(month: dt.date) -> str:
    return f"{month:%Y-%m}"


def current_month(institution: Any = None) -> dt.date:
    return (
        local_day(institution, None).replace(day=1) if institution is not None else timezone.now().date().replace(day=1)
    )


def month_end(month: dt.date) -> dt.date:
    return month.replace(day=calendar.monthrange(month.year, month.month)[1])


def price_list() -> dict[str, Decimal]:
    """Unit price of every item: the platform administrator's, else the default."""
    prices = {item: default for item, (_, _, default) in PRICE_ITEMS.items()}
    prices.update({p.item: p.unit_price for p in Price.objects.filter(item__in=PRICE_ITEMS)})
    return prices


@dataclass
class Line:
    item: str  # a PRICE_ITEMS key
    label: str
    detail: str  # the site, or the other institution of a pool reading
    unit: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass
class Statement:
    institution: Institution
    month: dt.date
    lines: list[Line] = field(default_factory=list)
    currency: str = CURRENCY

    @property
    def label(self) -> str:
        return month_label(self.month)

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def starts_at(self) -> dt.datetime:
        """The first instant of the month, in the institution's time zone."""
        return dt.datetime.combine(self.month, dt.time(), tzinfo=zone(self.institution.time_zone))

    @property
    def ends_at(self) -> dt.datetime:
        """The first instant after the month."""
        return dt.datetime.combine(
            month_end(self.month) + dt.timedelta(days=1), dt.time(), tzinfo=zone(self.institution.time_zone)
        )

    def quantity(self, item: str) -> Decimal:
        return sum((line.quantity for line in self.lines if line.item == item), Decimal(0))

    def amount(self, item: str) -> Decimal:
        return sum((line.amount for line in self.lines if line.item == item), Decimal("0.00"))


def _line(item: str, quantity: Decimal, prices: dict[str, Decimal], detail: str = "") -> Line:
    label, unit, _ = PRICE_ITEMS[item]
    quantity = quantity.quantize(QUANTITY_PLACES) if quantity != quantity.to_integral_value() else quantity
    amount = (quantity * prices[item]).quantize(CENT, rounding=ROUND_HALF_UP)
    return Line(item, label, detail, unit, quantity, prices[item], amount)


def statements(institutions: Iterable[Institution], month: dt.date) -> list[Statement]:
    """The statements of ``institutions`` for ``month``, from one query of the counters."""
    institutions = list(institutions)
    by_id = {i.pk: i for i in institutions}
    sums: dict[UUID, dict[tuple[str, str], int]] = defaultdict(dict)
    rows = (
        UsageCounter.objects.filter(institution_id__in=by_id, day__gte=month, day__lte=month_end(month))
        .values("institution_id", "metric", "dimension")
        .annotate(total=Sum("quantity"))
    )
    for row in rows:
        sums[row["institution_id"]][(row["metric"], row["dimension"])] = row["total"]
    others = {
        dimension
        for found in sums.values()
        for (metric, dimension) in found
        if metric in (Metric.POOL_READINGS_BOUGHT, Metric.POOL_READINGS_SOLD)
    }
    names = {str(pk): name for pk, name in Institution.objects.filter(pk__in=_uuids(others)).values_list("pk", "name")}
    prices = price_list()
    days = Decimal(calendar.monthrange(month.year, month.month)[1])
    result = []
    for institution in institutions:
        found = sums.get(institution.pk, {})
        lines = [_line(str(m), Decimal(found.get((str(m), ""), 0)), prices) for m in COUNTED]
        for (metric, dimension), total in sorted(found.items()):
            if metric == Metric.STORED_BYTES:
                tier, _, site = dimension.partition("/")
                item = f"storage_{tier}" if f"storage_{tier}" in PRICE_ITEMS else "storage_online"
                lines.append(_line(item, Decimal(total) / GB / days, prices, detail=site))
            elif metric in (Metric.POOL_READINGS_BOUGHT, Metric.POOL_READINGS_SOLD):
                lines.append(_line(metric, Decimal(total), prices, detail=names.get(dimension, dimension)))
        result.append(Statement(institution, month, lines))
    return result


def statement(institution: Institution, month: dt.date) -> Statement:
    return statements([institution], month)[0]


def _uuids(values: Iterable[str]) -> list[UUID]:
    found = []
    for value in values:
        try:
            found.append(UUID(value))
        except ValueError:
            continue
    return found


def totals_this_month() -> tuple[str, dict[Any, str]]:
    """The platform table's usage column: each institution's total so far in its own current month."""
    by_month: dict[dt.date, list[Institution]] = defaultdict(list)
    for institution in Institution.objects.all():
        by_month[current_month(institution)].append(institution)
    totals: dict[Any, str] = {}
    for month, institutions in by_month.items():
        totals.update({s.institution.pk: f"{s.total:,.2f}" for s in statements(institutions, month)})
    return f"Usage this month ({CURRENCY})", totals
