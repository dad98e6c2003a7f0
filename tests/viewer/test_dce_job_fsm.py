"""The DCE map job's state machine as a literal table over every state and method."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django_fsm import TransitionNotAllowed

from viewer.analysis.models import DceMapJob

S = DceMapJob.State
NOW = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
KWARGS = {
    "begin": {},
    "finish": {"results": {"maps": {}}, "now": NOW},
    "fail": {"error": "the mask holds no pixel", "now": NOW},
    "cancel": {"now": NOW},
}

TABLE = {
    (S.QUEUED, "begin"): S.RUNNING,
    (S.RUNNING, "finish"): S.DONE,
    (S.RUNNING, "fail"): S.FAILED,
    (S.QUEUED, "cancel"): S.CANCELLED,
    (S.RUNNING, "cancel"): S.CANCELLED,
}


@pytest.mark.parametrize("state", list(S), ids=[s.value for s in S])
@pytest.mark.parametrize("method", list(KWARGS))
def test_transition_table(state, method):
    job = DceMapJob(state=state)
    expected = TABLE.get((state, method))
    if expected is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(job, method)(**KWARGS[method])
        assert job.state == state
    else:
        getattr(job, method)(**KWARGS[method])
        assert job.state == expected


def test_the_finished_states_are_the_ones_no_method_leaves():
    leaving = {source for source, _ in TABLE}
    assert set(DceMapJob.FINISHED) == set(S) - leaving


def test_the_state_field_is_protected():
    job = DceMapJob(state=S.RUNNING)
    with pytest.raises(AttributeError):
        job.state = S.DONE
