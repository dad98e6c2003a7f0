"""Hanging protocols (loaded with ``viewer.models``)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from pacs_cloud.models import Institution

LAYOUTS = ("1x2", "2x2")
MAX_PANES = {"1x2": 2, "2x2": 4}


def validate_panes(value: object) -> None:
    """Panes: ``[{"study": "current"|"prior", "prior": 0, "series": 0, "series_description": "", "window": null}]``.

    ``prior`` is the prior's rank (0: the newest relevant prior); ``series`` the
    series' rank among the study's image series, unless ``series_description``
    (case-insensitive, part of the description) finds one; ``window`` is
    ``{"center": c, "width": w}`` or null for the image's own.
    """
    if not isinstance(value, list) or not 1 <= len(value) <= 4:
        raise ValidationError("Panes are a list of 1 to 4 panes.")
    for pane in value:
        if not isinstance(pane, dict) or pane.get("study") not in ("current", "prior"):
            raise ValidationError('Each pane names its study: "current" or "prior".')
        unknown = set(pane) - {"study", "prior", "series", "series_description", "window"}
        if unknown:
            raise ValidationError(f"Unknown pane keys: {', '.join(sorted(unknown))}.")
        for key in ("prior", "series"):
            if not isinstance(pane.get(key, 0), int) or isinstance(pane.get(key, 0), bool) or pane.get(key, 0) < 0:
                raise ValidationError(f"{key!r} is a rank: 0, 1, 2…")
        if not isinstance(pane.get("series_description", ""), str):
            raise ValidationError("'series_description' is text.")
        window = pane.get("window")
        if window is not None:
            if (
                not isinstance(window, dict)
                or set(window) != {"center", "width"}
                or not all(isinstance(window[k], int | float) and not isinstance(window[k], bool) for k in window)
                or window["width"] < 1
            ):
                raise ValidationError('A window is {"center": number, "width": number ≥ 1} or null.')


class HangingProtocol(models.Model):
    """A layout for studies of a modality and body region with at least ``min_priors`` priors.

    Exactly one owner: an institution (``user`` empty) or a user (``institution`` empty).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(
        Institution, null=True, blank=True, on_delete=models.CASCADE, related_name="hanging_protocols"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="hanging_protocols"
    )
    name = models.CharField(max_length=200)
    position = models.PositiveSmallIntegerField(default=0, help_text="Protocols are tried from the lowest position.")
    modality = models.CharField(max_length=16, blank=True, help_text="Blank: any modality.")
    body_region = models.CharField(max_length=32, blank=True, help_text="Blank: any body region.")
    min_priors = models.PositiveSmallIntegerField(default=0, help_text="Applies when at least this many priors exist.")
    layout = models.CharField(max_length=8, choices=[(v, v) for v in LAYOUTS], default="1x2")
    panes = models.JSONField(validators=[validate_panes])
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["position", "created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(institution__isnull=True, user__isnull=False)
                | models.Q(institution__isnull=False, user__isnull=True),
                name="hanging_protocol_one_owner",
            )
        ]
        indexes = [
            models.Index(fields=["user", "position"], name="hanging_user_order"),
            models.Index(fields=["institution", "position"], name="hanging_institution_order"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from archive.priors.selection import REGIONS

        self.modality = self.modality.strip().upper()
        self.body_region = self.body_region.strip().upper()
        if self.body_region and self.body_region not in REGIONS:
            raise ValidationError({"body_region": f"Choose one of: {', '.join(sorted(REGIONS))}."})
        if isinstance(self.panes, list) and len(self.panes) > MAX_PANES.get(self.layout, 4):
            raise ValidationError({"panes": f"The {self.layout} layout has {MAX_PANES[self.layout]} panes."})
