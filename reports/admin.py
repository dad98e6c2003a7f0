"""Signed report versions, read-only. Only what proves a signature is shown (who, when, the hashes and
the verification code): the findings are patient data, which the platform's operators do not see."""

from django.contrib import admin

from pacs_cloud.admin import ReadOnlyAdmin

from .models import ReportVersion


@admin.register(ReportVersion)
class ReportVersionAdmin(ReadOnlyAdmin):
    list_display = ("verification_code", "number", "kind", "signer_name", "signed_at", "is_critical")
    list_filter = ("kind", "is_critical")
    fields = (
        "number",
        "kind",
        "signer_name",
        "signing_key",
        "signed_at",
        "is_critical",
        "canonical_sha256",
        "previous_sha256",
        "verification_code",
        "dicom_sop_instance_uid",
    )
