"""Break-glass allowances and accesses. The tables belong to the ``archive`` app (``archive.models`` imports them)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from pacs_cloud.models import Institution


class BreakGlassAllowance(models.Model):
    """``institution`` lets the clinicians and radiologists of ``allowed`` break glass on its studies."""

    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="break_glass_allowances")
    allowed = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "archive"
        constraints = [
            models.UniqueConstraint(fields=["institution", "allowed"], name="break_glass_allowance_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.allowed} may break glass at {self.institution}"


class BreakGlassAccess(models.Model):
    """One emergency opening of a study: who, why, until when; ended when its grant was taken back."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # The institution through which the user asked (where they hold the clinical role).
    via_institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey("archive.Study", on_delete=models.CASCADE, related_name="+")
    # The study's institution, kept for the review list.
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "archive"
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["user", "expires_at"], name="break_glass_user_expiry"),
            models.Index(fields=["institution", "started_at"], name="break_glass_institution"),
        ]

    def is_active(self) -> bool:
        return self.ended_at is None and self.expires_at > timezone.now()
