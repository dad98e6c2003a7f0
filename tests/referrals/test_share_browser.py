"""In headless Chromium: a county hospital shares a CT for a second opinion, then revokes it.

Riverside's coordinator goes from the navigation to Shares, finds the CT by
patient ID and shares it with Central City Hospital until a date and time;
Central's coordinator finds it among the studies shared with them and opens it
in the viewer; Riverside revokes the share from its page; the viewer answers
404 to Central and the share is gone from Central's page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import browser_login, make_tenant
from tests.referrals.conftest import archived_ct
from workflow.referrals.models import StudyShare

pytestmark = pytest.mark.browser
SLICES = 4


@pytest.fixture
def hospitals(live_url):
    riverside = make_tenant("riverside", "Riverside County Hospital", "RCH")
    central = make_tenant("central", "Central City Hospital", "CCH")
    ct = archived_ct(
        riverside.institution,
        patient_name="Adeyemi^Tola",
        patient_id="RCH-000233",
        description="CT THORAX",
        slices=SLICES,
    )
    return riverside, central, ct


def test_share_for_a_second_opinion_view_it_and_revoke_it(browser_context, live_url, hospitals):
    riverside, central, ct = hospitals

    coord = browser_login(browser_context(), live_url, riverside.referral_coordinator.username)
    coord.click("nav >> text=Shares")
    coord.click("#new-share")
    coord.fill("input[name=q]", "RCH-000233")
    coord.click("form.filters button[type=submit]")
    coord.check(f"#study-{ct.pk}")
    coord.select_option("select[name=institution]", label="Central City Hospital")
    until = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M")
    coord.fill("input[name=expires_at]", until)
    coord.fill("input[name=reason]", "Second opinion: pulmonary nodule")
    coord.click("#share")
    coord.wait_for_selector("#outgoing tr[data-share]")
    share = StudyShare.objects.get()
    assert "Central City Hospital" in coord.inner_text(f"#outgoing tr[data-share='{share.pk}']")

    central_coord = browser_login(browser_context(), live_url, central.referral_coordinator.username)
    central_coord.goto(f"{live_url}/shares/")
    row = f"#incoming tr[data-share='{share.pk}']"
    assert "Adeyemi, Tola" in central_coord.inner_text(row)
    central_coord.click(f"{row} a.button")
    central_coord.wait_for_selector("#viewer[data-ready=true]")
    central_coord.wait_for_function(
        "n => document.querySelector('#stack-viewport').dataset.loaded === String(n)", arg=SLICES, timeout=20_000
    )
    viewer_url = central_coord.url

    coord.fill(f"#outgoing tr[data-share='{share.pk}'] input[name=reason]", "answered")
    coord.click(f"#revoke-{share.pk}")
    coord.wait_for_selector("text=can no longer see the study")
    share.refresh_from_db()
    assert share.revoked_at is not None and share.revoke_reason == "answered"

    assert central_coord.goto(viewer_url).status == 404
    central_coord.goto(f"{live_url}/shares/")
    assert "Adeyemi" not in central_coord.content()
