"""Report templates change only through their audited actions, whoever asks."""

from __future__ import annotations

from pacs_cloud.models import AuditEvent
from reports.models import ReportTemplate
from tests.conftest import api_client


def test_a_template_is_created_changed_and_withdrawn_with_an_audit_event_each(reading):
    user = reading.tenant.radiologist
    client = api_client(user)
    institution = str(reading.study.institution_id)
    created = client.post(
        "/api/v1/report-templates/",
        {"institution": institution, "name": "CT head", "modality": "CT", "sections": {}},
        format="json",
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    assert ReportTemplate.objects.get(pk=pk).created_by == user
    changed = client.patch(f"/api/v1/report-templates/{pk}/", {"body_part": "HEAD"}, format="json")
    assert changed.status_code == 200 and changed.json()["body_part"] == "HEAD"
    assert client.delete(f"/api/v1/report-templates/{pk}/").status_code == 204
    assert ReportTemplate.objects.get(pk=pk).is_active is False
    events = AuditEvent.objects.filter(object_type="report_template", object_id=pk).order_by("id")
    assert [(e.action, e.actor_id) for e in events] == [
        ("report_template.create", user.pk),
        ("report_template.update", user.pk),
        ("report_template.deactivate", user.pk),
    ]
    assert events[1].detail == {"fields": ["body_part"]}


def test_a_duplicate_name_is_refused_with_the_actions_message(reading):
    client = api_client(reading.tenant.radiologist)
    body = {"institution": str(reading.study.institution_id), "name": "CT chest", "sections": {}}
    refused = client.post("/api/v1/report-templates/", body, format="json")
    assert refused.status_code == 400
    assert refused.json() == {"detail": "This hospital already has a template called CT chest."}
    assert ReportTemplate.objects.filter(name="CT chest").count() == 1
    assert not AuditEvent.objects.filter(action="report_template.create").exists()


def test_a_template_stays_at_its_hospital(tenants, reading):
    template = reading.template
    response = api_client(reading.tenant.radiologist).patch(
        f"/api/v1/report-templates/{template.pk}/", {"institution": str(tenants.b.institution.pk)}, format="json"
    )
    # Another hospital's templates are not the caller's to keep.
    assert response.status_code == 404
    template.refresh_from_db()
    assert template.institution_id == reading.study.institution_id
