"""SLA timers: escalation on breach with frozen time, breach flags, idle claims, re-timing, cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import time_machine

from archive import access
from tests.workflow.conftest import make_study, save_policy
from workflow.access import offered_tasks
from workflow.actions import do_claim_reading_task, do_start_reading_process, do_sweep_reading_tasks
from workflow.models import ProcessInstance, ReadingTask
from workflow.tasks import escalate_if_due
from worklist import signals as worklist_signals

START = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def escalating_policy(pool) -> dict:
    return {
        "rules": [
            {
                "name": "Own first, then the pool",
                "offer_to": [{"kind": "own"}],
                "sla_minutes": {"routine": 60, "stat": 15},
                "escalation": [{"offer_to": [{"kind": "pool", "pool": str(pool.pk)}], "sla_minutes": {"routine": 30}}],
            }
        ]
    }


def test_a_breached_task_escalates_to_the_next_target(tenants, centre):
    save_policy(tenants.a.institution, escalating_policy(centre.pool))
    with time_machine.travel(START, tick=False) as clock:
        task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
        assert task.due_at == START + timedelta(minutes=60)
        reader = centre.readers[0]
        assert task not in offered_tasks(reader)

        clock.shift(timedelta(minutes=59))
        assert escalate_if_due(str(task.pk)) is False  # an early timer changes nothing
        assert do_sweep_reading_tasks()["escalated"] == 0

        clock.shift(timedelta(minutes=2))
        assert do_sweep_reading_tasks()["escalated"] == 1
        assert escalate_if_due(str(task.pk)) is False  # the late ETA message finds nothing to do
        task.refresh_from_db()
        assert task.state == ReadingTask.State.ESCALATED
        assert task.escalation_level == 1
        assert task.breached_at == START + timedelta(minutes=61)
        assert task.due_at == START + timedelta(minutes=91)
        assert task in offered_tasks(reader)
        assert task not in offered_tasks(tenants.a.radiologist)  # offered to the next target instead

        # The end of the chain: breached again, flagged once, nowhere further to go.
        clock.shift(timedelta(minutes=31))
        assert do_sweep_reading_tasks()["escalated"] == 0
        task.refresh_from_db()
        assert task.state == ReadingTask.State.ESCALATED and task.escalation_level == 1


def test_a_held_task_past_its_sla_is_flagged_not_taken_away(tenants, centre, settings):
    settings.WORKFLOW_CLAIM_IDLE_MINUTES = 120
    save_policy(tenants.a.institution, escalating_policy(centre.pool))
    with time_machine.travel(START, tick=False) as clock:
        task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
        do_claim_reading_task(task, acting_user=tenants.a.radiologist)
        clock.shift(timedelta(minutes=65))
        do_sweep_reading_tasks()
        task.refresh_from_db()
        assert task.state == ReadingTask.State.CLAIMED
        assert task.breached_at is not None


def test_an_idle_claim_expires_back_to_the_pool(tenants, centre, settings):
    settings.WORKFLOW_CLAIM_IDLE_MINUTES = 30
    save_policy(
        tenants.a.institution,
        {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]},
    )
    with time_machine.travel(START, tick=False) as clock:
        task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
        reader = centre.readers[0]
        do_claim_reading_task(task, acting_user=reader)
        clock.shift(timedelta(minutes=29))
        assert do_sweep_reading_tasks()["expired"] == 0
        clock.shift(timedelta(minutes=2))
        assert do_sweep_reading_tasks()["expired"] == 1
        assert do_sweep_reading_tasks()["expired"] == 0
    task.refresh_from_db()
    assert task.state == ReadingTask.State.RELEASED and task.claimed_by is None
    assert not access.visible_studies(reader).filter(pk=task.study_id).exists()
    assert task in offered_tasks(centre.readers[1])


def test_a_priority_upgrade_re_times_the_tasks(tenants, centre):
    save_policy(tenants.a.institution, escalating_policy(centre.pool))
    with time_machine.travel(START, tick=False):
        study = make_study(tenants.a.institution, accession="ACC-UP")
        task = do_start_reading_process(study).tasks.get()
        order = SimpleNamespace(pk=999, priority="STAT", accession_number="ACC-UP", institution_id=study.institution_id)
        worklist_signals.order_priority_changed.send(sender=None, order=order, old_priority="ROUTINE")
    task.refresh_from_db()
    assert (task.priority, task.sla_minutes) == ("stat", 15)
    assert task.due_at == START + timedelta(minutes=15)


def test_cancelling_the_order_cancels_the_tasks_and_revokes_access(tenants, centre):
    save_policy(tenants.a.institution, escalating_policy(centre.pool))
    study = make_study(tenants.a.institution, accession="ACC-CX")
    process = do_start_reading_process(study)
    task = process.tasks.get()
    do_claim_reading_task(task, acting_user=tenants.a.radiologist)
    order = SimpleNamespace(pk=1000, priority="ROUTINE", accession_number="ACC-CX", institution_id=study.institution_id)
    worklist_signals.order_cancelled.send(sender=None, order=order)
    task.refresh_from_db()
    process.refresh_from_db()
    assert task.state == ReadingTask.State.CANCELLED
    assert process.state == ProcessInstance.State.CANCELLED
    assert not task.offers.filter(is_active=True).exists()
