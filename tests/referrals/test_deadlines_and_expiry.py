"""Response deadlines with reminders, and share expiries, enforced by the periodic sweep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import TestCase

from pacs_cloud.models import AuditEvent
from tests.conftest import api_client
from workflow.referrals import actions, tasks
from workflow.referrals.models import Referral, ReferralMessage, StudyShare

from .access_probe import probe
from .conftest import archived_study, sent

START = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


@pytest.fixture
def ct(tenants):
    return archived_study(tenants.a.institution)


def test_reminders_before_and_after_the_response_deadline(tenants, ct, settings):
    settings.REFERRAL_RESPONSE_HOURS = {"emergency": 2, "urgent": 24, "routine": 72}
    settings.REFERRAL_REMINDER_HOURS = 12
    with time_machine.travel(START, tick=False) as clock:
        referral = sent(tenants, ct, urgency="urgent")
        assert referral.response_due_at == START + timedelta(hours=24)
        assert tasks.sweep_referrals() == {"reminded": 0, "expired_shares": 0}
        clock.move_to(START + timedelta(hours=18))  # three quarters of the window
        with TestCase.captureOnCommitCallbacks(execute=False) as pushes:
            assert tasks.sweep_referrals()["reminded"] == 1
        assert pushes, "the reminder is pushed to the receiving coordinators"
        assert tasks.sweep_referrals()["reminded"] == 0  # safe to run twice
        clock.move_to(START + timedelta(hours=24, minutes=1))
        assert tasks.sweep_referrals()["reminded"] == 1
        clock.move_to(START + timedelta(hours=30))
        assert tasks.sweep_referrals()["reminded"] == 0
        clock.move_to(START + timedelta(hours=36, minutes=2))
        assert tasks.sweep_referrals()["reminded"] == 1
        reminders = list(ReferralMessage.objects.filter(referral=referral).values_list("body", flat=True))
        assert len(reminders) == 3
        assert "due by" in reminders[0] and "overdue" in reminders[1]
        referral.refresh_from_db()
        assert referral.reminders_sent == 3
        # The reminders are in the timeline both sides see.
        timeline = api_client(tenants.b.referral_coordinator).get(f"/api/v1/referrals/{referral.pk}/timeline/").json()
        assert [e["kind"] for e in timeline].count("reminder") == 3
        # An answer stops them.
        actions.do_accept_referral(referral, acting_user=tenants.b.referral_coordinator)
        clock.move_to(START + timedelta(hours=60))
        assert tasks.sweep_referrals()["reminded"] == 0
    assert AuditEvent.objects.filter(action="workflow.referral.reminder").count() == 3


def test_a_second_opinion_share_expires_by_the_periodic_task(tenants, ct):
    a, b, c = tenants.a, tenants.b, tenants.c
    with time_machine.travel(START, tick=False) as clock:
        answer = api_client(a.referral_coordinator).post(
            "/api/v1/study-shares/",
            {
                "study": str(ct.pk),
                "institution": str(b.institution.pk),
                "reason": "second opinion on the haematoma",
                "expires_at": (START + timedelta(days=3)).isoformat(),
            },
            format="json",
        )
        assert answer.status_code == 201, answer.content
        assert answer.json()["kind"] == "second_opinion"
        assert probe(b.clinician, ct).everywhere
        assert probe(b.radiologist, ct).everywhere
        assert probe(c.clinician, ct).nowhere
        listed = api_client(b.clinician).get("/api/v1/study-shares/").json()
        assert [s["id"] for s in listed["results"]] == [answer.json()["id"]]
        assert api_client(c.referral_coordinator).get("/api/v1/study-shares/").json()["count"] == 0
        clock.move_to(START + timedelta(days=3) - timedelta(seconds=1))
        assert tasks.sweep_referrals()["expired_shares"] == 0
        assert probe(b.clinician, ct).everywhere
        clock.move_to(START + timedelta(days=3, seconds=1))
        assert tasks.sweep_referrals()["expired_shares"] == 1
        assert tasks.sweep_referrals()["expired_shares"] == 0
    seen = probe(b.clinician, ct)
    assert seen.nowhere and seen.viewer == seen.metadata == seen.rest == 404
    share = StudyShare.objects.get()
    assert share.revoke_reason == "expired" and share.revoked_at == START + timedelta(days=3, seconds=1)
    revoke = AuditEvent.objects.get(action="sharing.revoke")
    assert revoke.actor == actions.SHARE_SWEEP and revoke.detail["grant_removed"] is True


def test_a_referral_share_with_an_end_date_expires_while_the_referral_stays_open(tenants, ct):
    with time_machine.travel(START, tick=False) as clock:
        referral = sent(tenants, ct, share_until=START + timedelta(days=10))
        assert probe(tenants.b.clinician, ct).everywhere
        clock.move_to(START + timedelta(days=11))
        tasks.sweep_referrals()
    assert probe(tenants.b.clinician, ct).nowhere
    referral.refresh_from_db()
    assert referral.state == Referral.State.SENT


def test_second_opinion_shares_are_limited(tenants, ct, settings):
    a, b = tenants.a, tenants.b
    settings.SHARE_MAX_DAYS = 30

    def share(user, study=ct, institution=b.institution, **extra):
        body = {"study": str(study.pk), "institution": str(institution.pk), "reason": "opinion", **extra}
        return api_client(user).post("/api/v1/study-shares/", body, format="json")

    too_long = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    assert share(a.referral_coordinator, expires_at=too_long).status_code == 400
    assert share(a.referral_coordinator, institution=a.institution).status_code == 400
    assert share(a.clinician).status_code == 403
    assert share(b.referral_coordinator).status_code == 404  # not their study
    made = share(a.radiologist)
    assert made.status_code == 201
    expires = datetime.fromisoformat(made.json()["expires_at"])
    assert timedelta(days=13) < expires - datetime.now(UTC) <= timedelta(days=14)
    # Only the owner ends it early; the receiver cannot.
    url = f"/api/v1/study-shares/{made.json()['id']}/revoke/"
    assert api_client(b.referral_coordinator).post(url, {}, format="json").status_code == 403
    assert api_client(tenants.c.referral_coordinator).post(url, {}, format="json").status_code == 404
    ended = api_client(a.referral_coordinator).post(url, {"reason": "answered"}, format="json")
    assert ended.status_code == 200 and ended.json()["active"] is False
    assert probe(b.clinician, ct).nowhere
