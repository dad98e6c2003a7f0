"""The platform operator's view of the archive's settings. No patient data is registered here:
platform administrators see no PHI by that role alone."""

from django.contrib import admin

from . import actions
from .breakglass.actions import do_allow_break_glass, do_disallow_break_glass
from .copies.actions import do_save_storage_location
from .models import ArchivePolicy, BreakGlassAllowance, DicomNode, EdgeGateway, StorageLocation
from .priors import actions as prior_actions
from .priors.models import PriorRule


@admin.register(DicomNode)
class DicomNodeAdmin(admin.ModelAdmin):
    list_display = ["ae_title", "institution", "host", "port", "is_active"]
    list_filter = ["institution", "is_active"]
    search_fields = ["ae_title", "description"]

    # Changes go through the audited action, as from the institution admins' page.
    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        actions.do_save_dicom_node(
            institution=obj.institution,
            acting_user=request.user,
            node=obj,
            ae_title=obj.ae_title,
            host=obj.host,
            port=obj.port,
            description=obj.description,
            is_active=obj.is_active,
        )

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        actions.do_delete_dicom_node(obj, acting_user=request.user)


@admin.register(ArchivePolicy)
class ArchivePolicyAdmin(admin.ModelAdmin):
    list_display = ["institution", "stability_seconds"]


@admin.register(EdgeGateway)
class EdgeGatewayAdmin(admin.ModelAdmin):
    """Health of every institution's edges, read-only: enrolment and tokens belong to the institution admins."""

    list_display = ["name", "institution", "last_seen_at", "outbox_depth", "oldest_unsent_seconds", "quarantined"]
    list_filter = ["institution"]
    readonly_fields = [f.name for f in EdgeGateway._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False


@admin.register(StorageLocation)
class StorageLocationAdmin(admin.ModelAdmin):
    """Where objects are kept: added and changed through the audited action; never deleted while copies remain."""

    list_display = [
        "name",
        "kind",
        "site",
        "tier",
        "cost_per_gb_month",
        "restore_minutes",
        "read_rank",
        "is_default",
        "healthy",
    ]
    list_filter = ["tier", "site", "healthy"]
    readonly_fields = ["is_default", "healthy", "checked_at", "last_error"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        do_save_storage_location(obj, acting_user=request.user)


@admin.register(BreakGlassAllowance)
class BreakGlassAllowanceAdmin(admin.ModelAdmin):
    """Which hospitals' clinicians and radiologists may break glass on which hospital's studies."""

    list_display = ["institution", "allowed", "created_at"]
    list_filter = ["institution"]
    fields = ["institution", "allowed"]

    # Added through the audited action; an allowance is never edited, only added or removed.
    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return obj is None

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        do_allow_break_glass(obj.institution, obj.allowed, acting_user=request.user)

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        do_disallow_break_glass(obj, acting_user=request.user)

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        for obj in queryset:
            do_disallow_break_glass(obj, acting_user=request.user)


@admin.register(PriorRule)
class PriorRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "institution", "position", "modality", "body_region", "years", "max_priors", "is_active"]
    list_filter = ["institution", "is_active"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        values = {name: getattr(obj, name) for name in (*prior_actions.RULE_FIELDS, "is_active")}
        prior_actions.do_save_prior_rule(institution=obj.institution, acting_user=request.user, rule=obj, **values)

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        prior_actions.do_delete_prior_rule(obj, acting_user=request.user)
