"""Configuration only: orders, steps and the queue hold patient data, which the
platform's operators do not see (they change through their actions)."""

from django.contrib import admin

from .models import Procedure, Station


@admin.register(Procedure)
class ProcedureAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "modality", "body_part", "duration_minutes", "institution", "is_active")
    list_filter = ("institution", "modality", "is_active")
    search_fields = ("code", "name")


@admin.register(Station)
class StationAdmin(admin.ModelAdmin):
    list_display = ("name", "modality", "node", "institution", "character_set", "is_active")
    list_filter = ("institution", "modality")
