"""The platform operator's view of the viewer's settings (no patient data)."""

from django.contrib import admin

from .analysis.models import AssumedTissueT1


@admin.register(AssumedTissueT1)
class AssumedTissueT1Admin(admin.ModelAdmin):
    """Pre-contrast tissue T1 per institution and body region, for DCE-MRI studies without a T1 map."""

    list_display = ["institution", "body_part", "t1_ms"]
    list_filter = ["institution"]
