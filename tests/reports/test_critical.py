"""Critical results: the referring clinician is told in the app, live and by mail; acknowledgement; escalation."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone
from websockets.sync.client import connect

from pacs_cloud import celery_app
from pacs_cloud.models import AuditEvent
from reports import tasks
from reports.models import CriticalResult
from tests.conftest import api_client, web_client

from .conftest import make_reading, write_and_sign


@pytest.fixture
def eager_tasks():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def _emails(tenant) -> None:
    for role, user in tenant.users.items():
        user.email = f"{role}@{tenant.institution.slug}.example"
        user.save(update_fields=["email"])


def _socket(live_url: str, user):
    client = Client()
    client.force_login(user)
    return connect(
        live_url.replace("http", "ws") + "/ws/notifications/",
        additional_headers={"Cookie": f"sessionid={client.cookies['sessionid'].value}", "Origin": live_url},
        open_timeout=10,
    )


def _next(socket, topic: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message["topic"] == topic:
            return message["data"]
    raise AssertionError(f"no {topic} push")


@pytest.mark.django_db(transaction=True)
def test_a_critical_flag_reaches_the_referring_clinician_live_in_the_app_and_by_mail(live_url, tenants, eager_tasks):
    reading = make_reading(tenants.a)
    _emails(tenants.a)
    clinician = tenants.a.clinician
    with _socket(live_url, clinician) as socket:
        report, version = write_and_sign(reading, critical=True, critical_note="Tension pneumothorax on the left.")
        pushed = _next(socket, "reports.critical")
    row = CriticalResult.objects.get(report=report)
    assert row.recipient == clinician  # named as referring physician on the order
    assert pushed == {
        "event": "flagged",
        "id": str(row.pk),
        "report": str(report.pk),
        "url": f"/reports/{report.pk}/",
        "note": "Tension pneumothorax on the left.",
    }
    assert [m.to for m in mail.outbox] == [[clinician.email]]
    assert "Tension pneumothorax" in mail.outbox[0].body and f"/reports/{report.pk}/" in mail.outbox[0].body
    # In the app: the home panel and the API list it; another clinician does not get it.
    home = web_client(clinician).get("/").content.decode()
    assert "Critical results" in home and "Tension pneumothorax" in home
    listed = api_client(clinician).get("/api/v1/critical-results/?open=1").json()["results"]
    assert [r["id"] for r in listed] == [str(row.pk)]
    assert api_client(tenants.b.clinician).get("/api/v1/critical-results/").json()["results"] == []
    # Acknowledged from the report page.
    response = web_client(clinician).post(f"/reports/critical/{row.pk}/acknowledge/")
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.acknowledged_by == clinician and row.acknowledged_at is not None
    assert AuditEvent.objects.filter(action="report.critical.acknowledge", object_id=str(row.pk)).exists()
    assert api_client(clinician).get("/api/v1/critical-results/?open=1").json()["results"] == []


def test_an_unacknowledged_critical_result_escalates_to_the_coordinators(reading, settings, eager_tasks):
    settings.REPORTS_CRITICAL_ACK_MINUTES = 15
    _emails(reading.tenant)
    coordinator = reading.tenant.referral_coordinator
    with time_machine.travel(dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC), tick=False):
        report, _ = write_and_sign(reading, critical=True, critical_note="Free air under the diaphragm.")
        row = CriticalResult.objects.get(report=report)
        assert row.due_at == timezone.now() + dt.timedelta(minutes=15)
    assert api_client(coordinator).get("/api/v1/critical-results/").json()["results"] == []
    mail.outbox.clear()
    with time_machine.travel(dt.datetime(2026, 11, 26, 8, 14, tzinfo=dt.UTC), tick=False):
        assert tasks.sweep()["escalated"] == 0
    with time_machine.travel(dt.datetime(2026, 11, 26, 8, 16, tzinfo=dt.UTC), tick=False):
        with TestCaseCallbacks() as callbacks:
            assert tasks.sweep()["escalated"] == 1
        assert tasks.sweep()["escalated"] == 0  # once only
    assert callbacks  # the push and the mail went out after commit
    row.refresh_from_db()
    assert row.escalated_at == dt.datetime(2026, 11, 26, 8, 16, tzinfo=dt.UTC)
    assert [m.to for m in mail.outbox] == [[coordinator.email]]
    assert "Nobody acknowledged" in mail.outbox[0].body
    seen = api_client(coordinator).get("/api/v1/critical-results/").json()["results"]
    assert [r["id"] for r in seen] == [str(row.pk)]
    acked = api_client(coordinator).post(f"/api/v1/critical-results/{row.pk}/acknowledge/")
    assert acked.status_code == 200 and acked.json()["acknowledged_at"]


def test_an_acknowledged_critical_result_does_not_escalate(reading, settings):
    settings.REPORTS_CRITICAL_ACK_MINUTES = 15
    with time_machine.travel(dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC), tick=False):
        report, _ = write_and_sign(reading, critical=True)
        row = CriticalResult.objects.get(report=report)
        api_client(reading.tenant.clinician).post(f"/api/v1/critical-results/{row.pk}/acknowledge/")
    with time_machine.travel(dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC), tick=False):
        assert tasks.sweep()["escalated"] == 0
    row.refresh_from_db()
    assert row.escalated_at is None and row.acknowledged_by == reading.tenant.clinician


def test_only_the_recipient_may_acknowledge(reading, tenants):
    report, _ = write_and_sign(reading, critical=True)
    row = CriticalResult.objects.get(report=report)
    assert api_client(tenants.b.clinician).post(f"/api/v1/critical-results/{row.pk}/acknowledge/").status_code == 404
    assert api_client(tenants.a.technologist).post(f"/api/v1/critical-results/{row.pk}/acknowledge/").status_code == 404
    row.refresh_from_db()
    assert row.acknowledged_at is None


class TestCaseCallbacks:
    """``captureOnCommitCallbacks(execute=True)`` as a plain context manager, collecting the callbacks."""

    def __enter__(self):
        from django.test import TestCase

        self._cm = TestCase.captureOnCommitCallbacks(execute=True)
        self.callbacks = self._cm.__enter__()
        return self.callbacks

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)
