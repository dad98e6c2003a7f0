"""Opening or acting on a study, report or reading task that is not yours is refused (404) and audited as denied."""

from __future__ import annotations

import uuid

import pytest

from pacs_cloud.models import AuditEvent
from reports.actions import do_create_report
from tests.conftest import api_client, web_client
from tests.workflow.conftest import make_study
from workflow.actions import do_claim_reading_task, do_start_reading_process


@pytest.fixture
def opened(tenants):
    """A study of hospital a, its reading task held by a's radiologist and the report they started."""
    study = make_study(tenants.a.institution)
    task = do_start_reading_process(study).tasks.get()
    do_claim_reading_task(task, acting_user=tenants.a.radiologist)
    report, _ = do_create_report(study, acting_user=tenants.a.radiologist)
    return study, task, report


def refusals(user) -> list[tuple[str, str, str]]:
    return [
        (e.action, e.object_type, e.object_id)
        for e in AuditEvent.objects.filter(actor_id=user.pk, outcome=AuditEvent.Outcome.DENIED).order_by("id")
    ]


def test_an_outsider_opening_a_study_report_or_task_is_audited(tenants, opened):
    study, task, report = opened
    outsider = tenants.c.radiologist
    page, api = web_client(outsider), api_client(outsider)
    for response in (
        page.get(f"/viewer/studies/{study.pk}/"),
        page.get(f"/viewer/studies/{study.pk}/compare/"),
        page.get(f"/viewer/studies/{study.pk}/dce/"),
        api.get(f"/api/v1/viewer/studies/{study.pk}/"),
        page.get(f"/reports/{report.pk}/"),
        page.get(f"/reports/{report.pk}/edit/"),
        api.get(f"/api/v1/reports/{report.pk}/"),
        api.get(f"/api/v1/reports/{report.pk}/pdf/"),
        page.get(f"/workflow/tasks/{task.pk}/"),
        api.get(f"/api/v1/reading-tasks/{task.pk}/"),
    ):
        assert response.status_code == 404, response.request["PATH_INFO"]
    assert refusals(outsider) == [
        *[("study.view_refused", "study", str(study.pk))] * 4,
        *[("report.view_refused", "report", str(report.pk))] * 4,
        *[("workflow.readingtask.open_refused", "workflow.readingtask", str(task.pk))] * 2,
    ]


def test_an_outsider_claiming_a_task_or_signing_a_report_is_audited(tenants, opened):
    _, task, report = opened
    outsider = tenants.c.radiologist
    api = api_client(outsider)
    assert web_client(outsider).post(f"/workflow/tasks/{task.pk}/claim/").status_code == 404
    assert api.post(f"/api/v1/reading-tasks/{task.pk}/claim/").status_code == 404
    assert api.post(f"/api/v1/reports/{report.pk}/sign/", {"password": "x"}, format="json").status_code == 404
    assert refusals(outsider) == [
        *[("workflow.readingtask.claim_refused", "workflow.readingtask", str(task.pk))] * 2,
        ("report.sign_refused", "report", str(report.pk)),
    ]


def test_a_missing_object_is_refused_and_audited_alike(tenants, opened):
    user = tenants.a.radiologist
    missing = str(uuid.uuid4())
    assert web_client(user).get(f"/reports/{missing}/").status_code == 404
    assert refusals(user) == [("report.view_refused", "report", missing)]


def test_an_opening_that_is_allowed_writes_no_refusal(tenants, opened):
    study, task, report = opened
    holder = tenants.a.radiologist
    assert web_client(holder).get(f"/reports/{report.pk}/").status_code == 200
    assert api_client(holder).get(f"/api/v1/reading-tasks/{task.pk}/").status_code == 200
    assert refusals(holder) == []
