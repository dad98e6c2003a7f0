"""The coordinator pages: inbox and outbox, a new referral, the detail with its timeline, the home panel."""

from __future__ import annotations

import pytest

from pacs_cloud.models import AuditEvent
from tests.conftest import web_client
from workflow.referrals.models import Referral

from .conftest import archived_study, sent


@pytest.fixture
def ct(tenants):
    return archived_study(tenants.a.institution, patient_name="Zhou^Hua", description="CT CHEST")


def act(user, referral, **form):
    return web_client(user).post(f"/referrals/{referral.pk}/act/", form)


def test_a_coordinator_drafts_sends_and_the_other_side_answers_from_the_pages(tenants, ct):
    a, b = tenants.a, tenants.b
    page = web_client(a.referral_coordinator).get("/referrals/new/", {"q": ct.patient.patient_id})
    assert page.status_code == 200 and b"CT CHEST" in page.content
    answer = web_client(a.referral_coordinator).post(
        "/referrals/new/",
        {
            "studies": [str(ct.pk)],
            "to_institution": str(b.institution.pk),
            "reason": "Lung mass: thoracic surgery",
            "urgency": "urgent",
            "direction": "upward",
            "clinical_summary": "Smoker, haemoptysis",
        },
    )
    referral = Referral.objects.get()
    assert answer.status_code == 302 and answer["Location"] == f"/referrals/{referral.pk}/"
    detail = web_client(a.referral_coordinator).get(answer["Location"]).content.decode()
    assert "Zhou, Hua" in detail and "not recorded yet" in detail and 'id="send"' not in detail
    act(a.referral_coordinator, referral, action="consent", method="verbal", note="witnessed by nurse")
    assert 'id="send"' in web_client(a.referral_coordinator).get(answer["Location"]).content.decode()
    act(a.referral_coordinator, referral, action="send")
    referral.refresh_from_db()
    assert referral.state == "sent"

    inbox = web_client(b.referral_coordinator).get("/referrals/", {"box": "inbox"}).content.decode()
    assert "Zhou, Hua" in inbox and tenants.a.institution.name in inbox
    assert "Zhou" not in web_client(tenants.c.referral_coordinator).get("/referrals/").content.decode()
    home = web_client(b.referral_coordinator).get("/").content.decode()
    assert "Referrals" in home and "Waiting for our answer" in home and "Zhou, Hua" in home

    act(b.referral_coordinator, referral, action="accept", reason="bed 12")
    act(b.referral_coordinator, referral, action="message", body="Please send the latest bloods.")
    act(b.referral_coordinator, referral, action="admit")
    page = web_client(b.referral_coordinator).get(f"/referrals/{referral.pk}/").content.decode()
    assert "Open in the viewer" in page and "Import into our archive" in page
    act(b.referral_coordinator, referral, action="return", discharge_summary="Lobectomy", follow_up_plan="Oncology")
    act(a.referral_coordinator, referral, action="close")
    referral.refresh_from_db()
    assert referral.state == "closed"
    timeline = web_client(a.referral_coordinator).get(f"/referrals/{referral.pk}/").content.decode()
    for text in [
        "draft",
        "sent",
        "accepted",
        "in_care",
        "returned",
        "closed",
        "bed 12",
        "Please send the latest bloods.",
    ]:
        assert text in timeline
    after = web_client(b.referral_coordinator).get(f"/referrals/{referral.pk}/").content.decode()
    assert "no longer shared with you" in after and "Open in the viewer" not in after
    assert AuditEvent.objects.filter(action="workflow.referral.view", object_id=str(referral.pk)).exists()


def test_refusals_show_as_messages_and_change_nothing(tenants, ct):
    referral = sent(tenants, ct)
    browser = web_client(tenants.b.referral_coordinator)
    answer = browser.post(f"/referrals/{referral.pk}/act/", {"action": "decline", "reason": ""})
    assert answer.status_code == 302
    page = browser.get(answer["Location"]).content.decode()
    assert "Say why the referral is declined." in page
    act(tenants.b.clinician, referral, action="accept")
    act(tenants.a.referral_coordinator, referral, action="accept")
    referral.refresh_from_db()
    assert referral.state == "sent"
    assert (
        web_client(tenants.c.referral_coordinator)
        .post(f"/referrals/{referral.pk}/act/", {"action": "accept"})
        .status_code
        == 404
    )
    assert web_client(tenants.a.clinician).get("/referrals/new/").status_code == 404


def test_the_study_search_of_a_new_referral_finds_only_the_coordinators_own(tenants, ct):
    page = web_client(tenants.b.referral_coordinator).get("/referrals/new/", {"q": ct.patient.patient_id})
    assert page.status_code == 200 and b"CT CHEST" not in page.content and b"Zhou" not in page.content
    page = web_client(tenants.a.referral_coordinator).get("/referrals/new/", {"q": "zhou"})
    assert b"CT CHEST" in page.content


def test_the_pages_listen_for_live_updates(tenants, ct):
    referral = sent(tenants, ct)
    page = web_client(tenants.b.referral_coordinator).get(f"/referrals/{referral.pk}/").content.decode()
    assert 'data-live-referrals="detail"' in page and "workflow/referrals" in page
