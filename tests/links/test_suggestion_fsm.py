"""The link suggestion's states, every state × method (no database: transitions change only the row)."""

import pytest
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from workflow.links.models import LinkSuggestion, PatientLink

S = LinkSuggestion.State
TABLE = {
    (S.PENDING, "confirm"): S.CONFIRMED,
    (S.PENDING, "reject"): S.REJECTED,
    (S.CONFIRMED, "confirm"): None,
    (S.CONFIRMED, "reject"): None,
    (S.REJECTED, "confirm"): None,
    (S.REJECTED, "reject"): None,
}


@pytest.mark.parametrize(("source", "method"), list(TABLE), ids=[f"{s.value}-{m}" for s, m in TABLE])
def test_transition_table(source, method):
    suggestion = LinkSuggestion(state=source, score=60)
    kwargs = {"now": timezone.now(), "user": None}
    if method == "confirm":
        kwargs["link"] = PatientLink()
    target = TABLE[(source, method)]
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(suggestion, method)(**kwargs)
        assert suggestion.state == source
    else:
        getattr(suggestion, method)(**kwargs)
        assert suggestion.state == target and suggestion.decided_at is not None
