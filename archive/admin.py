"""The platform operator's view of the archive's settings. No patient data is registered here:
platform administrators see no PHI by that role alone."""

from django.contrib import admin

from .models import ArchivePolicy, DicomNode


@admin.register(DicomNode)
class DicomNodeAdmin(admin.ModelAdmin):
    list_display = ["ae_title", "institution", "host", "port", "is_active"]
    list_filter = ["institution", "is_active"]
    search_fields = ["ae_title", "description"]


@admin.register(ArchivePolicy)
class ArchivePolicyAdmin(admin.ModelAdmin):
    list_display = ["institution", "stability_seconds"]
