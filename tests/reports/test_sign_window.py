"""The signing window: one password re-entered, then signatures without it for a few minutes.

The window belongs to one user's browser session or API token, ends with its
time, sign-out or a password change, and each signature's audit event says
whether the password was typed or the window used.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from axes.models import AccessAttempt
from django.contrib.auth import HASH_SESSION_KEY
from django.utils import timezone

from pacs_cloud.models import AuditEvent, Membership, Role
from reports import actions
from reports.models import Report
from tests.conftest import PASSWORD, api_client, browser_login, make_user, web_client

from .conftest import make_reading

NEW_PASSWORD = "another-password-456"  # noqa: S105


def draft(reading) -> Report:
    """A draft with findings by the task's holder, ready to sign."""
    user = reading.tenant.radiologist
    report, _ = actions.do_create_report(reading.study, acting_user=user, template=reading.template)
    content = {**report.draft, "findings": "A 6 mm nodule in the right upper lobe.", "impression": "Follow up."}
    return actions.do_autosave_draft(report, acting_user=user, content=content, base_revision=None)


def sign(client, report: Report, password: str = "", **fields):
    url = f"/api/v1/reports/{report.pk}/sign/"
    return client.post(url, {"password": password, **fields}, content_type="application/json")


def api_sign(client, report: Report, password: str = "", **fields):
    return client.post(f"/api/v1/reports/{report.pk}/sign/", {"password": password, **fields}, format="json")


def signatures(report: Report) -> list[dict]:
    """The audit detail of each signature of ``report``, in order."""
    rows = AuditEvent.objects.filter(
        object_id=str(report.pk), action__in=["reports.report.issue_preliminary", "reports.report.sign_final"]
    ).order_by("id")
    return [row.detail for row in rows]


def refusals(report: Report) -> list[str]:
    rows = AuditEvent.objects.filter(object_id=str(report.pk), action="report.sign_refused").order_by("id")
    return [row.detail["reason"] for row in rows]


def test_a_second_signature_inside_the_window_needs_no_password(reading):
    report = draft(reading)
    client = web_client(reading.tenant.radiologist)
    first = sign(client, report, PASSWORD, preliminary=True)
    assert first.status_code == 201, first.content
    assert first.json()["sign_window_until"] is not None
    second = sign(client, report)
    assert second.status_code == 201, second.content
    assert Report.objects.get(pk=report.pk).state == Report.State.FINAL
    audited = signatures(report)
    assert [d["reauthenticated"] for d in audited] == ["password", "window"]
    assert audited[0]["window_until"] == audited[1]["window_until"]


def test_the_editor_does_not_ask_for_the_password_inside_the_window(reading):
    report = draft(reading)
    client = web_client(reading.tenant.radiologist)
    page = client.get(f"/reports/{report.pk}/edit/").content.decode()
    assert 'id="sign-window" hidden' in page
    assert 'autocomplete="current-password" required' in page
    assert sign(client, report, PASSWORD, preliminary=True).status_code == 201
    page = client.get(f"/reports/{report.pk}/edit/").content.decode()
    assert 'id="sign-window" hidden' not in page
    assert 'id="sign-password-label" hidden' in page
    assert "you sign without it until" in page
    state = client.get("/api/v1/reports/sign-window/").json()
    assert 290 <= state["seconds_left"] <= 300


def test_after_the_window_the_password_is_asked_again(reading, settings):
    settings.REPORTS_SIGN_WINDOW_SECONDS = 60
    report = draft(reading)
    client = web_client(reading.tenant.radiologist)
    assert sign(client, report, PASSWORD, preliminary=True).status_code == 201
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        refused = sign(client, report)
        assert refused.status_code == 403
        assert refused.json()["code"] == "password_required"
        assert Report.objects.get(pk=report.pk).state == Report.State.PRELIMINARY
        assert client.get("/api/v1/reports/sign-window/").json() == {"until": None, "seconds_left": 0}
        assert sign(client, report, PASSWORD).status_code == 201
    assert refusals(report) == ["password_required"]
    assert [d["reauthenticated"] for d in signatures(report)] == ["password", "password"]


def test_no_window_opens_when_it_is_set_to_zero(reading, settings):
    settings.REPORTS_SIGN_WINDOW_SECONDS = 0
    report = draft(reading)
    client = web_client(reading.tenant.radiologist)
    first = sign(client, report, PASSWORD, preliminary=True)
    assert first.json()["sign_window_until"] is None
    assert sign(client, report).json()["code"] == "password_required"


def test_signing_out_ends_the_window(reading):
    user = reading.tenant.radiologist
    report = draft(reading)
    client = web_client(user)
    assert sign(client, report, PASSWORD, preliminary=True).status_code == 201
    client.post("/logout/")
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    refused = sign(client, report)
    assert refused.status_code == 403
    assert refused.json()["code"] == "password_required"


def test_a_password_change_ends_the_window_of_the_session_that_stays_signed_in(reading):
    user = reading.tenant.radiologist
    report = draft(reading)
    client = web_client(user)
    assert sign(client, report, PASSWORD, preliminary=True).status_code == 201
    user.set_password(NEW_PASSWORD)
    user.save()
    # The session where the password was changed stays signed in (update_session_auth_hash).
    session = client.session
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    assert client.get("/api/v1/reports/sign-window/").json()["until"] is None
    refused = sign(client, report)
    assert refused.status_code == 403
    assert refused.json()["code"] == "password_required"
    assert sign(client, report, NEW_PASSWORD).status_code == 201


def test_a_password_change_ends_a_tokens_window(reading):
    user = reading.tenant.radiologist
    report = draft(reading)
    client = api_client(user)
    assert api_sign(client, report, PASSWORD, preliminary=True).status_code == 201
    user.set_password(NEW_PASSWORD)
    user.save()
    refused = api_sign(client, report)
    assert refused.status_code == 403
    assert refused.json()["code"] == "password_required"


def test_another_session_of_the_same_user_has_no_window(reading):
    user = reading.tenant.radiologist
    report = draft(reading)
    mine, other = web_client(user), web_client(user)
    assert sign(mine, report, PASSWORD, preliminary=True).status_code == 201
    assert other.get("/api/v1/reports/sign-window/").json()["until"] is None
    refused = sign(other, report)
    assert refused.status_code == 403
    assert refused.json()["code"] == "password_required"
    assert sign(mine, report).status_code == 201


def test_another_user_in_the_same_browser_has_no_window(reading):
    report = draft(reading)
    colleague = make_user("second-radiologist@alpha")
    Membership.objects.create(user=colleague, institution=reading.tenant.institution, role=Role.RADIOLOGIST)
    client = web_client(reading.tenant.radiologist)
    assert sign(client, report, PASSWORD, preliminary=True).status_code == 201
    client.force_login(colleague, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get("/api/v1/reports/sign-window/").json()["until"] is None
    refused = sign(client, report)
    assert refused.status_code == 403
    assert refused.json()["code"] == "password_required"


def test_each_api_token_has_its_own_window(reading):
    user = reading.tenant.radiologist
    report = draft(reading)
    first, second = api_client(user), api_client(user)
    signed = api_sign(first, report, PASSWORD, preliminary=True)
    assert signed.status_code == 201
    assert signed.json()["sign_window_until"] is not None
    assert first.get("/api/v1/reports/sign-window/").json()["seconds_left"] > 0
    assert second.get("/api/v1/reports/sign-window/").json()["until"] is None
    refused = api_sign(second, report)
    assert refused.status_code == 403
    assert refused.json()["code"] == "password_required"
    # Nor does the same user's browser session get the token's window.
    assert web_client(user).get("/api/v1/reports/sign-window/").json()["until"] is None
    assert api_sign(first, report).status_code == 201
    assert [d["reauthenticated"] for d in signatures(report)] == ["password", "window"]


def test_a_wrong_password_opens_no_window_and_counts_toward_the_lockout(reading):
    report = draft(reading)
    client = api_client(reading.tenant.radiologist)
    wrong = api_sign(client, report, "not-my-password", preliminary=True)
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "password"
    assert AccessAttempt.objects.get(username=reading.tenant.radiologist.username).failures_since_start == 1
    assert client.get("/api/v1/reports/sign-window/").json()["until"] is None
    refused = api_sign(client, report, preliminary=True)
    assert refused.json()["code"] == "password_required"
    assert refusals(report) == ["password", "password_required"]
    assert Report.objects.get(pk=report.pk).state == Report.State.DRAFT


def test_a_wrong_password_inside_the_window_ends_it(reading):
    report = draft(reading)
    client = api_client(reading.tenant.radiologist)
    assert api_sign(client, report, PASSWORD, preliminary=True).status_code == 201
    assert api_sign(client, report, "not-my-password").status_code == 403
    refused = api_sign(client, report)
    assert refused.json()["code"] == "password_required"
    assert Report.objects.get(pk=report.pk).state == Report.State.PRELIMINARY


def test_a_signature_without_a_request_always_needs_the_password(reading):
    user = reading.tenant.radiologist
    report = draft(reading)
    actions.do_sign_report(report, acting_user=user, password=PASSWORD, preliminary=True)
    try:
        actions.do_sign_report(report, acting_user=user)
    except actions.ReportRefused as exc:
        assert exc.code == "password_required"
    else:
        raise AssertionError("signed without a password or a window")


@pytest.mark.django_db(transaction=True)
def test_in_the_browser_the_second_signature_asks_no_password(tenants, live_url, browser_context):
    reading = make_reading(tenants.a)
    report = draft(reading)
    page = browser_login(browser_context(), live_url, tenants.a.radiologist.username)
    page.goto(f"{live_url}/reports/{report.pk}/edit/")
    page.click("#sign-open")
    assert page.is_visible("#sign-password")
    assert not page.is_visible("#sign-window")
    page.fill("#sign-password", PASSWORD)
    page.check("#sign-preliminary")
    page.click("#sign-submit")
    page.wait_for_url(f"**/reports/{report.pk}/")

    page.goto(f"{live_url}/reports/{report.pk}/edit/")
    page.click("#sign-open")
    page.wait_for_selector("#sign-window:has-text('until')")
    assert not page.is_visible("#sign-password")
    page.click("#sign-submit")
    page.wait_for_url(f"**/reports/{report.pk}/")
    assert Report.objects.get(pk=report.pk).state == Report.State.FINAL
    assert [d["reauthenticated"] for d in signatures(report)] == ["password", "window"]


@pytest.mark.django_db(transaction=True)
def test_in_the_browser_the_dialog_asks_again_once_the_window_has_ended(tenants, live_url, browser_context):
    reading = make_reading(tenants.a)
    report = draft(reading)
    page = browser_login(browser_context(), live_url, tenants.a.radiologist.username)
    page.goto(f"{live_url}/reports/{report.pk}/edit/")
    page.click("#sign-open")
    page.fill("#sign-password", PASSWORD)
    page.check("#sign-preliminary")
    page.click("#sign-submit")
    page.wait_for_url(f"**/reports/{report.pk}/")
    page.goto(f"{live_url}/reports/{report.pk}/edit/")
    # The page was loaded inside the window; the dialog is opened after it ended.
    with time_machine.travel(timezone.now() + timedelta(seconds=301)):
        page.click("#sign-open")
        page.wait_for_selector("#sign-password", state="visible")
        assert not page.is_visible("#sign-window")
        page.fill("#sign-password", PASSWORD)
        page.click("#sign-submit")
        page.wait_for_url(f"**/reports/{report.pk}/")
    assert [d["reauthenticated"] for d in signatures(report)] == ["password", "password"]
