"""Key images: frames a reader marks as significant while viewing a study.

The report editor reads these to embed key images in a report (the idea of
the Key Object Selection "Of Interest" document, PS3.3 A.35.4, kept as rows).
Rows are written only by ``viewer.actions``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from archive.models import Instance, Study


class KeyImage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="key_images")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="key_images")
    frame = models.PositiveIntegerField(default=1, help_text="1-based frame number within the instance")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="key_images")
    note = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "frame", "user"], name="key_image_once_per_user"),
        ]
        indexes = [models.Index(fields=["study", "created"])]

    def __str__(self) -> str:
        return f"key image {self.instance.sop_instance_uid} frame {self.frame}"


# Sub-packages' models, so that Django registers them with this app.
# The DCE-MRI analysis part's models live in viewer.analysis.models but belong
# to this app (its tables, its migrations): importing them here is how Django
# finds them.
from .analysis.models import AssumedTissueT1, DceMapJob, DceRegionAnalysis  # noqa: E402, F401
from .hanging.models import HangingProtocol  # noqa: E402, F401
