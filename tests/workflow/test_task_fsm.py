"""The ReadingTask state machine as a literal table over every state and method."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django_fsm import TransitionNotAllowed

from workflow.models import ReadingTask

S = ReadingTask.State
NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
KWARGS = {
    "offer": {"now": NOW, "sla_minutes": 60},
    "claim": {"user": None, "now": NOW},
    "release": {},
    "expire": {},
    "start_draft": {"now": NOW},
    "issue_preliminary": {"now": NOW},
    "finalize": {"now": NOW},
    "escalate": {"now": NOW, "level": 1, "sla_minutes": 30},
    "reassign": {"now": NOW},
    "cancel": {"now": NOW},
}
OPEN = [S.OFFERED, S.RELEASED, S.ESCALATED, S.REASSIGNED]

TABLE = {
    (S.PENDING, "offer"): S.OFFERED,
    **{(s, "claim"): S.CLAIMED for s in OPEN},
    (S.CLAIMED, "release"): S.RELEASED,
    (S.DRAFTING, "release"): S.RELEASED,
    (S.CLAIMED, "expire"): S.RELEASED,
    (S.CLAIMED, "start_draft"): S.DRAFTING,
    (S.CLAIMED, "issue_preliminary"): S.PRELIMINARY,
    (S.DRAFTING, "issue_preliminary"): S.PRELIMINARY,
    (S.CLAIMED, "finalize"): S.FINAL,
    (S.DRAFTING, "finalize"): S.FINAL,
    (S.PRELIMINARY, "finalize"): S.FINAL,
    **{(s, "escalate"): S.ESCALATED for s in OPEN},
    **{(s, "reassign"): S.REASSIGNED for s in [*OPEN, S.CLAIMED, S.DRAFTING]},
    **{(s, "cancel"): S.CANCELLED for s in S if s not in (S.FINAL, S.CANCELLED)},
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("method", list(KWARGS))
def test_transition_table(state, method):
    task = ReadingTask(state=state)
    expected = TABLE.get((state, method))
    if expected is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(task, method)(**KWARGS[method])
        assert task.state == state
    else:
        getattr(task, method)(**KWARGS[method])
        assert task.state == expected


def test_the_state_field_is_protected():
    task = ReadingTask(state=S.OFFERED)
    with pytest.raises(AttributeError):
        task.state = S.FINAL
