"""The Order and MPPS state machines as literal tables over every state × method."""

import pytest
from django.db import transaction
from django_fsm import TransitionNotAllowed

from pacs_cloud.fsm import apply_transition, history
from worklist.models import Order, PerformedProcedureStep

S = Order.State
ORDER_TABLE = {
    (S.SCHEDULED, "arrive"): S.ARRIVED,
    (S.SCHEDULED, "start"): S.IN_PROGRESS,
    (S.SCHEDULED, "complete"): S.COMPLETED,
    (S.SCHEDULED, "discontinue"): TransitionNotAllowed,
    (S.SCHEDULED, "cancel"): S.CANCELLED,
    (S.ARRIVED, "arrive"): TransitionNotAllowed,
    (S.ARRIVED, "start"): S.IN_PROGRESS,
    (S.ARRIVED, "complete"): S.COMPLETED,
    (S.ARRIVED, "discontinue"): TransitionNotAllowed,
    (S.ARRIVED, "cancel"): S.CANCELLED,
    (S.IN_PROGRESS, "arrive"): TransitionNotAllowed,
    (S.IN_PROGRESS, "start"): TransitionNotAllowed,
    (S.IN_PROGRESS, "complete"): S.COMPLETED,
    (S.IN_PROGRESS, "discontinue"): S.DISCONTINUED,
    (S.IN_PROGRESS, "cancel"): TransitionNotAllowed,
    (S.COMPLETED, "arrive"): TransitionNotAllowed,
    (S.COMPLETED, "start"): TransitionNotAllowed,
    (S.COMPLETED, "complete"): TransitionNotAllowed,
    (S.COMPLETED, "discontinue"): TransitionNotAllowed,
    (S.COMPLETED, "cancel"): TransitionNotAllowed,
    (S.DISCONTINUED, "arrive"): TransitionNotAllowed,
    (S.DISCONTINUED, "start"): TransitionNotAllowed,
    (S.DISCONTINUED, "complete"): TransitionNotAllowed,
    (S.DISCONTINUED, "discontinue"): TransitionNotAllowed,
    (S.DISCONTINUED, "cancel"): TransitionNotAllowed,
    (S.CANCELLED, "arrive"): TransitionNotAllowed,
    (S.CANCELLED, "start"): TransitionNotAllowed,
    (S.CANCELLED, "complete"): TransitionNotAllowed,
    (S.CANCELLED, "discontinue"): TransitionNotAllowed,
    (S.CANCELLED, "cancel"): TransitionNotAllowed,
}

P = PerformedProcedureStep.State
MPPS_TABLE = {
    (P.IN_PROGRESS, "complete"): P.COMPLETED,
    (P.IN_PROGRESS, "discontinue"): P.DISCONTINUED,
    (P.COMPLETED, "complete"): TransitionNotAllowed,
    (P.COMPLETED, "discontinue"): TransitionNotAllowed,
    (P.DISCONTINUED, "complete"): TransitionNotAllowed,
    (P.DISCONTINUED, "discontinue"): TransitionNotAllowed,
}


def test_the_tables_cover_every_state_and_method():
    order_methods = {"arrive", "start", "complete", "discontinue", "cancel"}
    assert set(ORDER_TABLE) == {(s, m) for s in S for m in order_methods}
    assert set(MPPS_TABLE) == {(s, m) for s in P for m in ("complete", "discontinue")}


def _put_in_state(obj, state):
    type(obj).objects.filter(pk=obj.pk).update(state=state)
    return type(obj).objects.get(pk=obj.pk)


@pytest.mark.parametrize(("source", "method"), list(ORDER_TABLE))
def test_order_transition(sites, source, method, order_factory):
    order = _put_in_state(order_factory(), source)
    expected = ORDER_TABLE[(source, method)]
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if expected is TransitionNotAllowed:
            with pytest.raises(TransitionNotAllowed):
                apply_transition(locked, method, actor_label="test")
            assert Order.objects.get(pk=order.pk).state == source
            assert not history(order).exists()
        else:
            apply_transition(locked, method, actor_label="test", reason="table")
            assert Order.objects.get(pk=order.pk).state == expected
            row = history(order).get()
            assert (row.source, row.target, row.method) == (source, expected, method)


@pytest.mark.parametrize(("source", "method"), list(MPPS_TABLE))
def test_mpps_transition(sites, source, method):
    step = PerformedProcedureStep.objects.create(
        institution=sites["a"].institution, sop_instance_uid="1.2.3.4", station_ae_title="ALPHA_CT"
    )
    step = _put_in_state(step, source)
    expected = MPPS_TABLE[(source, method)]
    with transaction.atomic():
        locked = PerformedProcedureStep.objects.select_for_update().get(pk=step.pk)
        if expected is TransitionNotAllowed:
            with pytest.raises(TransitionNotAllowed):
                apply_transition(locked, method, actor_label="test")
        else:
            apply_transition(locked, method, actor_label="test")
            assert PerformedProcedureStep.objects.get(pk=step.pk).state == expected


def test_the_state_field_is_protected(sites, order_factory):
    order = order_factory()
    with pytest.raises(AttributeError):
        order.state = S.COMPLETED
