"""An institution's rules for choosing relevant priors (loaded with ``archive.models``)."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from pacs_cloud.models import Institution


class PriorRule(models.Model):
    """Which earlier studies are relevant when a study of this modality and region is read.

    Rules are tried in ``position`` order; the first whose ``modality`` and
    ``body_region`` (blank: any) match the current study applies.
    """

    class ModalityMatch(models.TextChoices):
        SAME = "same", "Same modality"
        RELATED = "related", "Same or related modality"
        ANY = "any", "Any modality"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="prior_rules")
    name = models.CharField(max_length=200)
    position = models.PositiveSmallIntegerField(default=0, help_text="Rules are tried from the lowest position.")
    modality = models.CharField(max_length=16, blank=True, help_text="Modality of the study read; blank: any.")
    body_region = models.CharField(max_length=32, blank=True, help_text="Body region of the study read; blank: any.")
    modality_match = models.CharField(max_length=8, choices=ModalityMatch.choices, default=ModalityMatch.RELATED)
    same_region = models.BooleanField(default=True, help_text="Only priors of the same body region.")
    years = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1), MaxValueValidator(50)])
    max_priors = models.PositiveSmallIntegerField(default=3, validators=[MinValueValidator(1), MaxValueValidator(20)])
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["institution", "position", "created_at"]
        indexes = [models.Index(fields=["institution", "position"], name="prior_rule_order")]

    def __str__(self) -> str:
        return f"{self.name} ({self.modality or 'any'} {self.body_region or 'any region'})"

    def clean(self) -> None:
        from .selection import REGIONS

        self.modality = self.modality.strip().upper()
        self.body_region = self.body_region.strip().upper()
        if self.body_region and self.body_region not in REGIONS:
            raise ValidationError({"body_region": f"Choose one of: {', '.join(sorted(REGIONS))}."})
