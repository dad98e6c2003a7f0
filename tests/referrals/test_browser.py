"""In headless Chromium: a county hospital refers a patient with a CT up to the tertiary hospital and back.

Riverside's coordinator drafts the referral from the archive, records consent
and sends it; Central's coordinator, whose inbox is open, sees it arrive live
and accepts it; a Central clinician opens the CT in the viewer; Central
returns the patient and Riverside closes the referral; the clinician can no
longer open the CT.
"""

from __future__ import annotations

import pytest

from tests.conftest import browser_login, make_tenant
from tests.referrals.conftest import archived_ct
from workflow.referrals.models import Referral

pytestmark = pytest.mark.browser
SLICES = 12


@pytest.fixture
def hospitals(live_url):
    riverside = make_tenant("riverside", "Riverside County Hospital", "RCH")
    central = make_tenant("central", "Central City Hospital", "CCH")
    ct = archived_ct(
        riverside.institution, patient_name="Huang^Ming", patient_id="RCH-000117", description="CT HEAD", slices=SLICES
    )
    return riverside, central, ct


def test_refer_up_accept_view_return_close_and_the_viewer_closes(browser_context, live_url, hospitals):
    riverside, central, ct = hospitals

    # Central's coordinator has the inbox open before anything is sent.
    central_coord = browser_login(browser_context(), live_url, central.referral_coordinator.username)
    central_coord.goto(f"{live_url}/referrals/?box=inbox")
    central_coord.wait_for_selector("[data-live-referrals][data-live=connected]")
    assert "Huang" not in central_coord.content()

    # Riverside's coordinator refers the patient with the CT.
    coord = browser_login(browser_context(), live_url, riverside.referral_coordinator.username)
    coord.goto(f"{live_url}/referrals/new/")
    coord.fill("input[name=q]", "RCH-000117")
    coord.click("form.filters button[type=submit]")
    coord.check(f"#study-{ct.pk}")
    coord.select_option("select[name=to_institution]", label="Central City Hospital")
    coord.select_option("select[name=urgency]", "urgent")
    coord.fill("input[name=reason]", "Intracranial haemorrhage: neurosurgical care")
    coord.fill("textarea[name=clinical_summary]", "Fall at home; GCS 13; on warfarin.")
    coord.click("#referral-form button[type=submit]")
    coord.wait_for_selector("#referral-consent")
    assert "not recorded yet" in coord.inner_text("#referral-consent")
    coord.select_option("select[name=method]", "written")
    coord.click("#consent button[type=submit]")
    coord.click("#send")
    coord.wait_for_function("document.getElementById('referral-state').textContent.trim() === 'Sent'")
    referral = Referral.objects.get()

    # The push brings it into Central's open inbox without a manual reload.
    central_coord.wait_for_selector(f"tr[data-referral='{referral.pk}']", timeout=15_000)
    assert "Huang, Ming" in central_coord.inner_text(f"tr[data-referral='{referral.pk}']")
    central_coord.click(f"tr[data-referral='{referral.pk}'] a")
    central_coord.click("#accept")
    central_coord.wait_for_function("document.getElementById('referral-state').textContent.trim() === 'Accepted'")

    # A Central clinician opens the CT in the viewer.
    doctor = browser_login(browser_context(), live_url, central.clinician.username)
    doctor.goto(f"{live_url}/referrals/{referral.pk}/")
    doctor.click("#studies a.button")
    doctor.wait_for_selector("#viewer[data-ready=true]")
    doctor.wait_for_function(
        "n => document.querySelector('#stack-viewport').dataset.loaded === String(n)", arg=SLICES, timeout=20_000
    )
    assert "Huang" in doctor.inner_text("[data-overlay=patient]")
    viewer_url = doctor.url

    # Central admits and returns the patient; Riverside closes the referral.
    central_coord.click("#admit")
    central_coord.wait_for_selector("#return-form")
    central_coord.fill("textarea[name=discharge_summary]", "Craniotomy; recovered, GCS 15.")
    central_coord.fill("textarea[name=follow_up_plan]", "CT head in 6 weeks at Riverside.")
    central_coord.click("#return")
    central_coord.wait_for_function("document.getElementById('referral-state').textContent.trim() === 'Returned'")
    coord.goto(f"{live_url}/referrals/{referral.pk}/")
    coord.click("#close")
    coord.wait_for_function("document.getElementById('referral-state').textContent.trim() === 'Closed'")
    timeline = coord.inner_text("#timeline")
    for step in ("draft", "sent", "accepted", "in_care", "returned", "closed"):
        assert step in timeline

    # The clinician can no longer open the CT.
    response = doctor.goto(viewer_url)
    assert response.status == 404
    response = doctor.goto(f"{live_url}/api/v1/viewer/studies/{ct.pk}/")
    assert response.status == 404
    doctor.goto(f"{live_url}/referrals/{referral.pk}/")
    assert "no longer shared with you" in doctor.inner_text("#studies")
