"""The second-opinion share pages: share a study from the form, both sides' lists, revoke, import."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pacs_cloud.models import AuditEvent
from tests.conftest import web_client
from workflow.referrals import actions
from workflow.referrals.models import ImportedStudy, StudyShare

from .access_probe import probe
from .conftest import archived_study


@pytest.fixture
def ct(tenants):
    return archived_study(tenants.a.institution, patient_name="Okafor^Ada", description="CT ABDOMEN")


def _local(when: datetime) -> str:
    """As a browser's datetime-local field sends it: the sharing hospital's wall-clock time."""
    return when.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%dT%H:%M")


def share_form(user, study, institution, *, client=None, **fields):
    body = {
        "study": str(study.pk),
        "institution": str(institution.pk),
        "reason": "Second opinion on a liver lesion",
        "expires_at": _local(datetime.now(UTC) + timedelta(days=5)),
        **fields,
    }
    return (client or web_client(user)).post("/shares/new/", body)


def test_a_coordinator_shares_from_the_form_and_both_sides_list_it(tenants, ct):
    a, b, c = tenants.a, tenants.b, tenants.c
    browser = web_client(a.referral_coordinator)
    form = browser.get("/shares/new/", {"q": ct.patient.patient_id})
    assert form.status_code == 200 and b"CT ABDOMEN" in form.content and b'type="datetime-local"' in form.content
    answer = share_form(a.referral_coordinator, ct, b.institution, client=browser)
    assert answer.status_code == 302 and answer["Location"] == "/shares/"
    share = StudyShare.objects.get()
    assert share.kind == StudyShare.Kind.SECOND_OPINION and share.institution == b.institution
    assert timedelta(days=4) < share.expires_at - datetime.now(UTC) <= timedelta(days=5)
    assert probe(b.clinician, ct).everywhere

    outgoing = browser.get(answer["Location"]).content.decode()
    assert f"Shared with {b.institution.name} until" in outgoing
    assert "Okafor, Ada" in outgoing and "Second opinion on a liver lesion" in outgoing
    assert f'id="revoke-{share.pk}"' in outgoing

    incoming = web_client(b.referral_coordinator).get("/shares/").content.decode()
    assert "Okafor, Ada" in incoming and a.institution.name in incoming
    assert f"/viewer/studies/{ct.pk}/" in incoming and f'id="import-{share.pk}"' in incoming
    assert f'id="revoke-{share.pk}"' not in incoming
    # A third institution sees nothing of it.
    other = web_client(c.referral_coordinator).get("/shares/").content.decode()
    assert "Okafor" not in other and "liver lesion" not in other
    assert AuditEvent.objects.filter(action="workflow.share.list", detail__shares=[str(share.pk)]).count() == 2


def test_revoking_from_the_page_makes_the_study_404_for_the_receiver(tenants, ct):
    a, b, c = tenants.a, tenants.b, tenants.c
    share_form(a.referral_coordinator, ct, b.institution)
    share = StudyShare.objects.get()
    url = f"/shares/{share.pk}/act/"
    # Neither the receiver nor a third institution may end it.
    assert web_client(c.referral_coordinator).post(url, {"action": "revoke"}).status_code == 404
    refused = web_client(b.referral_coordinator).post(url, {"action": "revoke"}, follow=True).content.decode()
    assert "Only the study&#x27;s institution ends a second-opinion share" in refused
    assert probe(b.clinician, ct).everywhere

    done = web_client(a.referral_coordinator).post(url, {"action": "revoke", "reason": "answered by phone"})
    assert done.status_code == 302
    share.refresh_from_db()
    assert share.revoked_at is not None and share.revoke_reason == "answered by phone"
    seen = probe(b.clinician, ct)
    assert seen.nowhere and seen.viewer == seen.rest == 404
    assert AuditEvent.objects.filter(action="sharing.revoke", object_id=str(ct.pk)).exists()
    assert "Okafor" not in web_client(b.referral_coordinator).get("/shares/").content.decode()
    assert web_client(b.referral_coordinator).post(url, {"action": "import"}).status_code == 404
    # The owner's list keeps it, as ended, with the reason.
    ended = web_client(a.referral_coordinator).get("/shares/", {"ended": "1"}).content.decode()
    assert "answered by phone" in ended and f'id="revoke-{share.pk}"' not in ended


@pytest.mark.parametrize(
    "expiry, message",
    [
        ("", "Give the date and time when the share ends."),
        ("not a date", "Give the date and time when the share ends."),
        ("2026-02-30T10:00", "Give the date and time when the share ends."),
        ("2001-01-01T10:00", "The expiry must be in the future."),
        ("far", "A share lasts at most"),
    ],
)
def test_a_bad_expiry_is_refused_with_a_clear_message(tenants, ct, expiry, message, settings):
    if expiry == "far":
        expiry = _local(datetime.now(UTC) + timedelta(days=settings.SHARE_MAX_DAYS + 1))
    answer = share_form(tenants.a.referral_coordinator, ct, tenants.b.institution, expires_at=expiry)
    assert answer.status_code == 200
    assert message in answer.content.decode()
    assert "Second opinion on a liver lesion" in answer.content.decode()  # the form keeps what was typed
    assert not StudyShare.objects.exists()
    assert probe(tenants.b.clinician, ct).nowhere


def test_wrong_institution_and_roles_get_404(tenants, ct):
    a, b, c = tenants.a, tenants.b, tenants.c
    # Another institution's study cannot be shared from its page (404 alike for missing and not yours).
    assert share_form(b.referral_coordinator, ct, c.institution).status_code == 404
    assert share_form(c.referral_coordinator, ct, b.institution).status_code == 404
    assert not StudyShare.objects.exists()
    # A clinician neither shares nor keeps the shares page.
    assert web_client(a.clinician).get("/shares/").status_code == 404
    assert web_client(a.clinician).get("/shares/new/").status_code == 404
    # The form's search finds only the coordinator's own institution's studies.
    found = web_client(b.referral_coordinator).get("/shares/new/", {"q": ct.patient.patient_id})
    assert b"CT ABDOMEN" not in found.content and b"Okafor" not in found.content
    # An unknown share is a 404 too.
    share = actions.do_share_for_second_opinion(ct, b.institution, acting_user=a.referral_coordinator, reason="x")
    assert web_client(c.radiologist).post(f"/shares/{share.pk}/act/", {"action": "revoke"}).status_code == 404


def test_the_receiver_imports_a_shared_study_from_the_page(tenants, ct):
    a, b = tenants.a, tenants.b
    share = actions.do_share_for_second_opinion(
        ct, b.institution, acting_user=a.referral_coordinator, reason="opinion please"
    )
    answer = web_client(b.referral_coordinator).post(
        f"/shares/{share.pk}/act/", {"action": "import", "patient": "new", "patient_id": "B-777"}, follow=True
    )
    page = answer.content.decode()
    assert "Imported into your archive under patient B-777." in page
    imported = ImportedStudy.objects.get()
    assert imported.institution == b.institution and imported.patient.patient_id == "B-777"
    assert imported.study.institution == b.institution and imported.source_study == ct
    assert "imported as patient B-777" in page and f'id="import-{share.pk}"' not in page
    # The sender cannot import its own study through the share.
    again = web_client(a.referral_coordinator).post(f"/shares/{share.pk}/act/", {"action": "import"}, follow=True)
    assert "Only the institution it is shared with imports it." in again.content.decode()


def test_the_nav_links_the_shares_page_next_to_referrals(tenants):
    page = web_client(tenants.a.referral_coordinator).get("/").content.decode()
    assert page.index('href="/referrals/"') < page.index('href="/shares/"')
    assert 'href="/shares/"' not in web_client(tenants.a.clinician).get("/").content.decode()
