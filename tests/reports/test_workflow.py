"""Signing a final report finishes the read: the reading task, the exam's order and the study's state."""

from __future__ import annotations

from archive.models import Study
from pacs_cloud.fsm import history
from reports import actions
from tests.conftest import PASSWORD, api_client
from workflow.models import ProcessInstance, ReadingTask
from worklist.models import Order

from .conftest import write_and_sign


def test_starting_a_draft_moves_the_claimed_task_to_drafting(reading):
    assert reading.task.state == ReadingTask.State.CLAIMED
    response = api_client(reading.tenant.radiologist).post(
        "/api/v1/reports/", {"study": str(reading.study.pk), "template": str(reading.template.pk)}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["draft"]["technique"] == "Axial CT of the chest without contrast."
    assert body["reading_task"] == reading.task.pk or str(body["reading_task"]) == str(reading.task.pk)
    reading.task.refresh_from_db()
    assert reading.task.state == ReadingTask.State.DRAFTING
    # Opening it again gives the same draft.
    again = api_client(reading.tenant.radiologist).post("/api/v1/reports/", {"study": str(reading.study.pk)})
    assert again.status_code == 200 and again.json()["id"] == body["id"]


def test_signing_final_completes_the_task_the_order_and_the_study(reading):
    assert reading.order.state in (Order.State.IN_PROGRESS, Order.State.SCHEDULED, Order.State.ARRIVED)
    report, version = write_and_sign(reading)
    task = ReadingTask.objects.get(pk=reading.task.pk)
    assert task.state == ReadingTask.State.FINAL
    assert task.finished_at is not None
    assert [t.method for t in history(task)][-1] == "finalize"
    assert ProcessInstance.objects.get(pk=task.process_id).state == ProcessInstance.State.COMPLETED
    order = Order.objects.get(pk=reading.order.pk)
    assert order.state == Order.State.COMPLETED
    assert history(order).last().reason == "report signed"
    assert Study.objects.get(pk=reading.study.pk).state == Study.State.REPORTED
    # The signer keeps access to the study they reported.
    assert api_client(reading.tenant.radiologist).get(f"/api/v1/reports/{report.pk}/").status_code == 200


def test_an_addendum_marks_the_study_amended_and_leaves_the_task_final(reading):
    report, _ = write_and_sign(reading)
    user = reading.tenant.radiologist
    opened = actions.do_open_addendum(report, acting_user=user, kind="addendum")
    actions.do_autosave_draft(
        opened, acting_user=user, content={**opened.draft, "addendum": "Reviewed with priors."}, base_revision=None
    )
    actions.do_sign_report(opened, acting_user=user, password=PASSWORD)
    assert Study.objects.get(pk=reading.study.pk).state == Study.State.AMENDED
    assert ReadingTask.objects.get(pk=reading.task.pk).state == ReadingTask.State.FINAL


def test_a_pool_reader_without_a_task_cannot_write(reading, tenants):
    response = api_client(tenants.b.radiologist).post("/api/v1/reports/", {"study": str(reading.study.pk)})
    assert response.status_code == 404
    clinician = api_client(reading.tenant.clinician).post("/api/v1/reports/", {"study": str(reading.study.pk)})
    assert clinician.status_code == 403
