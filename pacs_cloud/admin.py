from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import ApiToken, AuditEvent, Institution, Membership, Transition, User


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(User)
class PacsUserAdmin(UserAdmin):
    fieldsets = (*(UserAdmin.fieldsets or ()), ("Cloud PACS", {"fields": ("display_name", "is_platform_admin")}))
    inlines = [MembershipInline]


@admin.register(Institution)
class InstitutionAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "kind", "accession_prefix", "is_active")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("id", "time", "actor", "action", "object_type", "object_id", "outcome")
    list_filter = ("action", "outcome")

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


admin.site.register(ApiToken)
admin.site.register(Transition)
