"""The usage counters and the platform's price list."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone


class Metric(models.TextChoices):
    STUDIES_RECEIVED = "studies_received", "Studies received"
    INSTANCES_RECEIVED = "instances_received", "Instances received"
    # A daily snapshot in bytes per "tier/site"; billed as GB-months.
    STORED_BYTES = "stored_bytes", "Storage"
    IMAGES_RENDERED = "images_rendered", "Images rendered"
    READS = "reads", "Study reads"
    REPORTS_SIGNED = "reports_signed", "Reports signed"
    # The other institution's id is the counter's dimension.
    POOL_READINGS_BOUGHT = "pool_readings_bought", "Pool readings bought"
    POOL_READINGS_SOLD = "pool_readings_sold", "Pool readings sold"


class UsageCounter(models.Model):
    """How much of one metric one institution used on one of its local days.

    ``institution_id`` is a plain column, as in the audit trail: figures that
    were billed outlive a deleted institution, and a counter written by the
    background flush never waits on a row another transaction holds.
    ``dimension`` splits a metric: ``online/site-a`` for storage, the other
    institution's id for pool readings, blank otherwise.
    """

    id = models.BigAutoField(primary_key=True)
    institution_id = models.UUIDField()
    day = models.DateField(help_text="The institution's local date.")
    metric = models.CharField(max_length=32, choices=Metric.choices)
    dimension = models.CharField(max_length=100, blank=True, default="")
    quantity = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution_id", "day", "metric", "dimension"], name="usage_counter_key")
        ]
        indexes = [models.Index(fields=["day", "institution_id"], name="usage_counter_day")]

    def __str__(self) -> str:
        return f"{self.institution_id} {self.day} {self.metric}/{self.dimension}: {self.quantity}"


# What the platform charges, per unit (CNY). Storage is priced per tier of the
# storage location holding the copy; a pool reading sold is a credit.
PRICE_ITEMS: dict[str, tuple[str, str, Decimal]] = {
    "studies_received": ("Studies received", "study", Decimal("1.00")),
    "instances_received": ("Instances received", "instance", Decimal("0.005")),
    "storage_online": ("Storage, online tier", "GB-month", Decimal("0.12")),
    "storage_nearline": ("Storage, nearline tier", "GB-month", Decimal("0.06")),
    "storage_archive": ("Storage, archive tier", "GB-month", Decimal("0.02")),
    "images_rendered": ("Images rendered", "image", Decimal("0.0002")),
    "reads": ("Study reads", "opening", Decimal("0.10")),
    "reports_signed": ("Reports signed", "report", Decimal("0.50")),
    "pool_readings_bought": ("Pool readings bought", "reading", Decimal("25.00")),
    "pool_readings_sold": ("Pool readings sold (credit)", "reading", Decimal("-20.00")),
}
CURRENCY = "CNY"


class Price(models.Model):
    """One line of the platform's price list, as the platform administrator set it (else the default)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    item = models.CharField(max_length=32, unique=True, choices=[(k, v[0]) for k, v in PRICE_ITEMS.items()])
    unit_price = models.DecimalField(max_digits=12, decimal_places=4)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["item"]

    def __str__(self) -> str:
        return f"{self.item}: {self.unit_price} {CURRENCY}"
