"""Changing the platform's price list."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import audit
from .models import PRICE_ITEMS, Price


def do_set_prices(prices: dict[str, Decimal], *, acting_user: Any, request: Any = None) -> list[str]:
    """Set unit prices (CNY) of price-list items; returns the items that changed. Audited with old and new."""
    unknown = set(prices) - set(PRICE_ITEMS)
    if unknown:
        raise ValueError(f"no such price-list item: {', '.join(sorted(unknown))}")
    changed: dict[str, list[str]] = {}
    with transaction.atomic():
        current = {p.item: p for p in Price.objects.select_for_update().filter(item__in=prices)}
        now = timezone.now()
        for item, value in sorted(prices.items()):
            row = current.get(item)
            old = row.unit_price if row is not None else PRICE_ITEMS[item][2]
            if Decimal(old) == Decimal(value):
                continue
            if row is None:
                Price.objects.create(item=item, unit_price=value, updated_at=now, updated_by=acting_user)
            else:
                row.unit_price, row.updated_at, row.updated_by = value, now, acting_user
                row.save(update_fields=["unit_price", "updated_at", "updated_by"])
            changed[item] = [str(old), str(value)]
        if changed:
            audit.record(
                "usage.prices.change",
                request=request,
                actor=acting_user,
                object_type="usage.price_list",
                detail={"changed": changed},
            )
    return sorted(changed)
