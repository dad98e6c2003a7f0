"""Break-glass in Chromium: a clinician refused a study breaks glass with a reason; the administrator sees it."""

from __future__ import annotations

import pytest

from archive.breakglass.actions import do_allow_break_glass
from archive.models import Patient, Study
from pacs_cloud.models import Role
from tests.conftest import browser_login

pytestmark = pytest.mark.browser
REASON = "急诊：胸痛，需要调阅外院CT"


def test_a_clinician_breaks_glass_and_the_administrator_sees_the_alert_and_the_review(
    tenants, live_url, browser_context
):
    do_allow_break_glass(tenants.a.institution, tenants.b.institution, acting_user=tenants.a.institution_admin)
    patient = Patient.objects.create(institution=tenants.a.institution, patient_id="A-77", name="张^三")
    study = Study.objects.create(institution=tenants.a.institution, patient=patient, study_instance_uid="1.2.156.77")
    assert Role.CLINICIAN in {m.role for m in tenants.b.clinician.memberships.all()}

    doctor = browser_login(browser_context(), live_url, tenants.b.clinician.username)
    refused = doctor.goto(f"{live_url}/viewer/studies/{study.pk}/")
    assert refused.status == 404
    doctor.goto(f"{live_url}/break-glass/?study={study.study_instance_uid}")
    doctor.fill("#reason", REASON)
    doctor.click("#break-glass-form button[type=submit]")
    doctor.wait_for_url(f"**/viewer/studies/{study.pk}/")
    assert "Emergency access until" in doctor.content()

    # The administrator sees the alert on the home page and the access, with its read, on the review page.
    admin = browser_login(browser_context(), live_url, tenants.a.institution_admin.username)
    admin.goto(f"{live_url}/")
    panel = admin.inner_text("#break-glass-panel")
    assert "1 emergency access running now" in panel and REASON in panel
    admin.click("text=Review break-glass access")
    row = admin.inner_text("#break-glass-review tbody")
    assert REASON in row and tenants.b.clinician.username in row and "study.view" in row
