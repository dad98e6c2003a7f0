from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest

from .models import ApiToken, AuditEvent, Institution, Membership, Transition, User


class ReadOnlyAdmin(admin.ModelAdmin):
    """An append-only record: the platform administrator may read it, nobody adds, changes or deletes it here.

    The add and delete pages answer 403 and the change page shows the fields without a save button.
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "time", "actor", "action", "object_type", "object_id", "outcome")
    list_filter = ("action", "outcome")


@admin.register(Transition)
class TransitionAdmin(ReadOnlyAdmin):
    list_display = ("id", "time", "content_type", "object_id", "source", "target", "method", "actor_label")
    list_filter = ("content_type", "method")


admin.site.register(ApiToken)
