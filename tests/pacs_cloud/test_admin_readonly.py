"""Append-only records (audit events, state transitions, signed report versions) are read-only in the admin."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django.utils import timezone

from pacs_cloud.audit import record
from pacs_cloud.models import AuditEvent, Institution, Transition
from reports.models import ReportVersion
from tests.conftest import web_client
from tests.reports.conftest import make_reading, write_and_sign


@pytest.fixture(autouse=True)
def _storage(tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.REPORTS_HL7_OUTBOUND = ""


def audit_event(tenants) -> AuditEvent:
    record("test.read", actor=tenants.a.radiologist, institution=tenants.a.institution, object_type="study")
    return AuditEvent.objects.latest("id")


def transition(tenants) -> Transition:
    return Transition.objects.create(
        content_type=ContentType.objects.get_for_model(Institution),
        object_id=tenants.a.institution.pk,
        source="a",
        target="b",
        method="test",
        time=timezone.now(),
    )


def report_version(tenants) -> ReportVersion:
    _, version = write_and_sign(make_reading(tenants.a))
    return version


RECORDS = {"audit event": audit_event, "transition": transition, "report version": report_version}


@pytest.fixture(params=sorted(RECORDS))
def row(request, tenants):
    return RECORDS[request.param](tenants)


def admin_url(row, page: str, *args) -> str:
    meta = row._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{page}", args=args)


def test_the_platform_admin_may_read_the_record(row, platform_admin):
    client = web_client(platform_admin)
    assert client.get(admin_url(row, "changelist")).status_code == 200
    response = client.get(admin_url(row, "change", row.pk))
    assert response.status_code == 200
    assert b'name="_save"' not in response.content
    assert b'name="_continue"' not in response.content
    assert b"deletelink" not in response.content


def test_it_refuses_to_add_one(row, platform_admin):
    client = web_client(platform_admin)
    assert client.get(admin_url(row, "add")).status_code == 403
    assert client.post(admin_url(row, "add"), {}).status_code == 403


def test_it_refuses_to_delete_one(row, platform_admin):
    client = web_client(platform_admin)
    assert client.get(admin_url(row, "delete", row.pk)).status_code == 403
    assert client.post(admin_url(row, "delete", row.pk), {"post": "yes"}).status_code == 403
    assert type(row).objects.filter(pk=row.pk).exists()


def test_it_refuses_to_change_one(row, platform_admin):
    client = web_client(platform_admin)
    response = client.post(admin_url(row, "change", row.pk), {"action": "changed", "source": "x", "kind": "final"})
    assert response.status_code == 403


def test_the_list_offers_no_bulk_delete(row, platform_admin):
    response = web_client(platform_admin).get(admin_url(row, "changelist"))
    assert b"delete_selected" not in response.content


def test_a_signed_version_shows_no_findings_to_the_platform_admin(tenants, platform_admin):
    version = report_version(tenants)
    response = web_client(platform_admin).get(admin_url(version, "change", version.pk))
    assert version.verification_code.encode() in response.content
    assert b"A 6 mm nodule" not in response.content
