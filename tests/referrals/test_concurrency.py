"""Races on PostgreSQL: one answer per referral, and a revoke never loses a share made at the same time."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from pacs_cloud.models import Membership, Role
from tests.conftest import make_user, requires_postgres
from workflow.referrals import actions
from workflow.referrals.models import Referral, StudyShare

from .access_probe import probe
from .conftest import archived_study, sent

pytestmark = [requires_postgres, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def race(jobs):
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(job):
        try:
            barrier.wait()
            try:
                result = job()
            except actions.ReferralRefused as refused:
                result = refused.code
            with lock:
                outcomes.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_two_coordinators_answering_at_once_give_one_answer(tenants):
    ct = archived_study(tenants.a.institution)
    referral = sent(tenants, ct)
    second = make_user("coord2@bravo")
    Membership.objects.create(user=second, institution=tenants.b.institution, role=Role.REFERRAL_COORDINATOR)

    def accept():
        actions.do_accept_referral(referral, acting_user=tenants.b.referral_coordinator)
        return "accepted"

    def decline():
        actions.do_decline_referral(referral, acting_user=second, reason="no bed")
        return "declined"

    outcomes = race([accept, decline])
    assert sorted(outcomes) in (["accepted", "bad_state"], ["bad_state", "declined"])
    referral.refresh_from_db()
    assert referral.state in (Referral.State.ACCEPTED, Referral.State.DECLINED)
    # Sharing follows whichever answer won.
    assert probe(tenants.b.clinician, ct).everywhere == (referral.state == Referral.State.ACCEPTED)


def test_a_share_made_while_another_is_revoked_keeps_the_study_visible(tenants):
    ct = archived_study(tenants.a.institution)
    for _ in range(5):
        first = sent(tenants, ct)
        made: list[StudyShare] = []

        def cancel(first=first):
            actions.do_cancel_referral(first, acting_user=tenants.a.referral_coordinator, reason="race")
            return "cancelled"

        def share(made=made):
            made.append(
                actions.do_share_for_second_opinion(
                    ct, tenants.b.institution, acting_user=tenants.a.radiologist, reason="race"
                )
            )
            return "shared"

        assert sorted(race([cancel, share])) == ["cancelled", "shared"]
        assert probe(tenants.b.clinician, ct).everywhere
        actions.do_revoke_share(made[0], acting_user=tenants.a.radiologist, reason="next round")
        assert probe(tenants.b.clinician, ct).nowhere
