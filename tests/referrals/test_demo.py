"""The demo's referral: another Riverside patient's CT referred upward to Central, sent and not yet accepted."""

from __future__ import annotations

from archive import demo as archive_demo
from pacs_cloud import demo as platform_demo
from pacs_cloud.models import User
from workflow.referrals import demo
from workflow.referrals.models import Referral

from .access_probe import probe


def test_the_demo_referral_is_sent_to_central_and_shares_its_ct(db):
    platform_demo.seed()
    archive_demo.seed()
    lines = demo.seed()
    demo.seed()  # idempotent
    referral = Referral.objects.get()
    assert referral.state == Referral.State.SENT and referral.consent_recorded_at is not None
    assert referral.from_institution.slug == "riverside" and referral.to_institution.slug == "central"
    assert referral.direction == Referral.Direction.UPWARD and "Central City Hospital" in lines[0]
    study = referral.attachments.get().study
    assert study.modalities == "CT" and study.patient.patient_id == "RCH-100318"
    assert probe(User.objects.get(username="doc@central"), study).everywhere
    assert probe(User.objects.get(username="doc@riverside"), study).everywhere
    inbox = Referral.objects.filter(to_institution__slug="central", state="sent")
    assert list(inbox) == [referral]
