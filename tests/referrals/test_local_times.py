"""Referral and share times read in the reader's institution's zone, and say which."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine

from tests.conftest import api_client, web_client
from workflow.referrals import tasks
from workflow.referrals.models import ReferralMessage, StudyShare

from .conftest import archived_study, sent

NOW = datetime(2026, 12, 7, 6, 3, tzinfo=UTC)  # 14:03 in Beijing
PRODUCT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ct(tenants):
    return archived_study(tenants.a.institution, patient_name="Okafor^Ada", description="CT ABDOMEN")


def test_the_share_form_takes_and_shows_the_hospitals_local_time(tenants, ct):
    a, b = tenants.a, tenants.b
    browser = web_client(a.referral_coordinator)
    with time_machine.travel(NOW, tick=False):
        form = browser.get("/shares/new/").content.decode()
        assert "Until (UTC+8)" in form and "(UTC)" not in form
        assert 'min="2026-12-07T14:03"' in form
        answer = browser.post(
            "/shares/new/",
            {
                "study": str(ct.pk),
                "institution": str(b.institution.pk),
                "reason": "Second opinion on a liver lesion",
                "expires_at": "2026-12-10T09:30",  # Beijing wall-clock time
            },
            follow=True,
        )
    share = StudyShare.objects.get()
    assert share.expires_at == datetime(2026, 12, 10, 1, 30, tzinfo=UTC)
    page = answer.content.decode()
    assert f"Shared with {b.institution.name} until 2026-12-10 09:30 UTC+8." in page
    assert "01:30" not in page


def test_the_share_form_reads_the_time_in_the_sharing_hospitals_zone(tenants, ct):
    a, b = tenants.a, tenants.b
    a.institution.time_zone = "Asia/Kolkata"
    a.institution.save(update_fields=["time_zone"])
    with time_machine.travel(NOW, tick=False):
        form = web_client(a.referral_coordinator).get("/shares/new/").content.decode()
        assert "Until (UTC+5:30)" in form and 'min="2026-12-07T11:33"' in form
        web_client(a.referral_coordinator).post(
            "/shares/new/",
            {
                "study": str(ct.pk),
                "institution": str(b.institution.pk),
                "reason": "opinion",
                "expires_at": "2026-12-10T09:30",
            },
        )
    assert StudyShare.objects.get().expires_at == datetime(2026, 12, 10, 4, 0, tzinfo=UTC)


def test_the_share_api_takes_and_gives_iso_8601_with_offsets(tenants, ct):
    with time_machine.travel(NOW, tick=False):
        answer = api_client(tenants.a.referral_coordinator).post(
            "/api/v1/study-shares/",
            {
                "study": str(ct.pk),
                "institution": str(tenants.b.institution.pk),
                "reason": "opinion",
                "expires_at": "2026-12-10T09:30:00+08:00",
            },
            format="json",
        )
    assert answer.status_code == 201, answer.content
    assert StudyShare.objects.get().expires_at == datetime(2026, 12, 10, 1, 30, tzinfo=UTC)
    given = datetime.fromisoformat(answer.json()["expires_at"])
    assert given.tzinfo is not None and given == datetime(2026, 12, 10, 1, 30, tzinfo=UTC)


def test_reminders_print_the_deadline_in_the_receiving_hospitals_time(tenants, ct, settings):
    settings.REFERRAL_RESPONSE_HOURS = {"emergency": 2, "urgent": 24, "routine": 72}
    tenants.b.institution.time_zone = "Asia/Kolkata"  # the receiver, who is asked to answer
    tenants.b.institution.save(update_fields=["time_zone"])
    with time_machine.travel(NOW, tick=False) as clock:
        sent(tenants, ct, urgency="urgent")  # due 2026-12-08 06:03 UTC
        clock.move_to(NOW + timedelta(hours=18))
        assert tasks.sweep_referrals()["reminded"] == 1
        clock.move_to(NOW + timedelta(hours=24, minutes=1))
        assert tasks.sweep_referrals()["reminded"] == 1
    before, after = ReferralMessage.objects.order_by("created_at").values_list("body", flat=True)
    assert before == "Reminder: a response is due by 2026-12-08 11:33 UTC+5:30."
    assert after == "Reminder: the response was due at 2026-12-08 11:33 UTC+5:30 and is overdue."


def test_referral_and_share_pages_label_their_times_with_the_hospitals_zone(tenants, ct):
    a, b = tenants.a, tenants.b
    with time_machine.travel(NOW, tick=False):
        referral = sent(tenants, ct)
        web_client(a.referral_coordinator).post(
            "/shares/new/",
            {
                "study": str(ct.pk),
                "institution": str(b.institution.pk),
                "reason": "opinion",
                "expires_at": "2026-12-10T09:30",
            },
        )
    pages = [
        web_client(a.referral_coordinator).get("/shares/").content.decode(),
        web_client(b.referral_coordinator).get("/shares/").content.decode(),
        web_client(b.referral_coordinator).get("/referrals/", {"box": "inbox"}).content.decode(),
        web_client(b.referral_coordinator).get(f"/referrals/{referral.pk}/").content.decode(),
        web_client(b.referral_coordinator).get("/").content.decode(),
    ]
    for page in pages:
        assert "UTC+8" in page
        assert "(UTC)" not in page


def test_no_page_labels_a_column_of_local_times_as_utc():
    """Pages show times with ``|when`` in the hospital's zone; a "(UTC)" heading above them would lie."""
    lying = [
        str(path.relative_to(PRODUCT))
        for app in ("pacs_cloud", "archive", "worklist", "workflow", "viewer", "reports")
        for path in (PRODUCT / app).rglob("*.html")
        if "(UTC)" in path.read_text()
    ]
    assert lying == []
