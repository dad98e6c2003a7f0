"""The Referral state machine as a literal table over every state and transition method."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from workflow.referrals.models import Referral

S = Referral.State
NOW = timezone.now()
KWARGS = {
    "send": {"now": NOW, "response_due_at": NOW + timedelta(hours=1), "next_reminder_at": NOW},
    "accept": {"now": NOW},
    "decline": {"now": NOW, "decline_reason": "no bed"},
    "admit": {"now": NOW},
    "return_to_sender": {"now": NOW, "discharge_summary": "stable", "follow_up_plan": "CT in 6 weeks"},
    "close": {"now": NOW},
    "cancel": {"now": NOW},
}
# (source, method) -> target; every pair not listed must raise TransitionNotAllowed.
TABLE = {
    (S.DRAFT, "send"): S.SENT,
    (S.DRAFT, "cancel"): S.CANCELLED,
    (S.SENT, "accept"): S.ACCEPTED,
    (S.SENT, "decline"): S.DECLINED,
    (S.SENT, "cancel"): S.CANCELLED,
    (S.ACCEPTED, "admit"): S.IN_CARE,
    (S.ACCEPTED, "cancel"): S.CANCELLED,
    (S.IN_CARE, "return_to_sender"): S.RETURNED,
    (S.RETURNED, "close"): S.CLOSED,
}
PAIRS = [(state, method) for state in S for method in KWARGS]


@pytest.mark.parametrize(("source", "method"), PAIRS, ids=[f"{s.value}-{m}" for s, m in PAIRS])
def test_transition_table(source, method):
    referral = Referral(state=source)
    expected = TABLE.get((source, method))
    if expected is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(referral, method)(**KWARGS[method])
        assert referral.state == source
    else:
        getattr(referral, method)(**KWARGS[method])
        assert referral.state == expected


def test_the_state_field_is_protected():
    referral = Referral(state=S.DRAFT)
    with pytest.raises(AttributeError):
        referral.state = S.CLOSED


def test_transitions_record_their_times_and_texts():
    referral = Referral(state=S.SENT)
    referral.decline(**KWARGS["decline"])
    assert referral.decline_reason == "no bed" and referral.ended_at == NOW and referral.next_reminder_at is None
    referral = Referral(state=S.IN_CARE)
    referral.return_to_sender(**KWARGS["return_to_sender"])
    assert referral.follow_up_plan == "CT in 6 weeks" and referral.returned_at == NOW
