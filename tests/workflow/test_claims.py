"""Claims: exclusive under concurrency, within the cap, two readers for a double read."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from archive import access
from pacs_cloud.models import AuditEvent
from tests.conftest import requires_postgres
from tests.workflow.conftest import make_radiologist, make_study, save_policy
from workflow.access import offered_tasks
from workflow.actions import (
    TaskRefused,
    do_claim_reading_task,
    do_finalize_task,
    do_reassign_reading_task,
    do_start_reading_process,
)
from workflow.models import PoolMember, ProcessInstance, ReadingTask


def pool_policy(pool, **rule) -> dict:
    return {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(pool.pk)}], **rule}]}


def test_the_claim_cap_is_respected(tenants, centre):
    save_policy(tenants.a.institution, pool_policy(centre.pool))
    tasks = [do_start_reading_process(make_study(tenants.a.institution)).tasks.get() for _ in range(4)]
    reader = centre.readers[0]
    for task in tasks[:3]:
        do_claim_reading_task(task, acting_user=reader)
    with pytest.raises(TaskRefused) as refused:
        do_claim_reading_task(tasks[3], acting_user=reader)
    assert refused.value.code == "cap_reached"
    # A member's own cap overrides the pool's.
    PoolMember.objects.filter(user=reader).update(claim_cap=4)
    do_claim_reading_task(tasks[3], acting_user=reader)


def test_a_task_not_offered_to_you_cannot_be_claimed(tenants, centre):
    save_policy(tenants.b.institution, pool_policy(centre.pool))
    task = do_start_reading_process(make_study(tenants.b.institution)).tasks.get()
    for user in (tenants.a.radiologist, tenants.c.radiologist, tenants.b.clinician):
        with pytest.raises(TaskRefused) as refused:
            do_claim_reading_task(task, acting_user=user)
        assert refused.value.code == "not_offered"


@requires_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refused_claim_leaves_an_audit_event(tenants, centre):
    save_policy(tenants.b.institution, pool_policy(centre.pool))
    task = do_start_reading_process(make_study(tenants.b.institution)).tasks.get()
    for user, code in ((tenants.a.radiologist, "not_offered"), (centre.readers[1], "not_open")):
        if code == "not_open":
            do_claim_reading_task(task, acting_user=centre.readers[0])
        with pytest.raises(TaskRefused):
            do_claim_reading_task(task, acting_user=user)
        event = AuditEvent.objects.get(action="workflow.readingtask.claim_refused", actor_id=user.pk)
        assert event.outcome == AuditEvent.Outcome.DENIED
        assert event.object_id == str(task.pk)
        assert event.institution_id == tenants.b.institution.pk
        assert event.detail["code"] == code


def test_a_subspecialty_offer_reaches_only_members_with_it(tenants, centre):
    save_policy(
        tenants.a.institution,
        {
            "rules": [
                {"name": "Neuro", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk), "subspecialty": "neuro"}]}
            ]
        },
    )
    task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
    neuro, body, neuro_msk = centre.readers
    assert task in offered_tasks(neuro) and task in offered_tasks(neuro_msk)
    assert task not in offered_tasks(body)


def test_a_member_reads_only_for_hospitals_they_are_credentialled_for(tenants, centre):
    save_policy(tenants.b.institution, pool_policy(centre.pool))
    task = do_start_reading_process(make_study(tenants.b.institution)).tasks.get()
    reader = centre.readers[0]
    assert task in offered_tasks(reader)
    PoolMember.objects.get(user=reader).credentialed_for.remove(tenants.b.institution)
    assert task not in offered_tasks(reader)


def test_double_reading_needs_two_radiologists_then_reconciles(tenants, centre):
    save_policy(tenants.a.institution, pool_policy(centre.pool, double_reading=True))
    process = do_start_reading_process(make_study(tenants.a.institution, modality="MG", body_part="BREAST"))
    first, second, reconcile = (process.tasks.get(kind=k) for k in ("read", "second_read", "reconciliation"))
    assert reconcile.state == ReadingTask.State.PENDING
    a, b, c = centre.readers
    do_claim_reading_task(first, acting_user=a)
    with pytest.raises(TaskRefused) as refused:
        do_claim_reading_task(second, acting_user=a)
    assert refused.value.code == "same_reader"
    do_claim_reading_task(second, acting_user=b)
    do_finalize_task(first, acting_user=a)
    reconcile.refresh_from_db()
    assert reconcile.state == ReadingTask.State.PENDING
    do_finalize_task(second, acting_user=b)
    reconcile.refresh_from_db()
    assert reconcile.state == ReadingTask.State.OFFERED
    do_claim_reading_task(reconcile, acting_user=c)
    do_finalize_task(reconcile, acting_user=c)
    process.refresh_from_db()
    assert process.state == ProcessInstance.State.COMPLETED


def test_an_administrator_reassigns_a_held_task_to_a_named_radiologist(tenants, centre):
    save_policy(tenants.a.institution, pool_policy(centre.pool))
    task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
    a, b, _ = centre.readers
    do_claim_reading_task(task, acting_user=a)
    do_reassign_reading_task(task, acting_user=tenants.a.institution_admin, to_user=b, reason="a is off sick")
    task.refresh_from_db()
    assert task.state == ReadingTask.State.REASSIGNED
    assert not access.visible_studies(a).filter(pk=task.study_id).exists()
    assert list(offered_tasks(b)) == [task]
    assert task not in offered_tasks(centre.readers[2])
    do_claim_reading_task(task, acting_user=b)
    outsider = make_radiologist(tenants.c.institution, "rad9@charlie")
    with pytest.raises(TaskRefused):
        do_reassign_reading_task(task, acting_user=tenants.a.institution_admin, to_user=outsider)


@requires_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_claims_of_one_task_have_exactly_one_winner(tenants, centre):
    readers = [make_radiologist(tenants.a.institution, f"crowd{i}@alpha") for i in range(50)]
    task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim(user):
        try:
            barrier.wait()
            try:
                do_claim_reading_task(task, acting_user=user)
                result = "won"
            except TaskRefused as refused:
                result = refused.code
            with lock:
                outcomes.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(user,)) for user in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(set(outcomes)) == ["not_open", "won"]
    assert outcomes.count("won") == 1
    task.refresh_from_db()
    assert task.state == ReadingTask.State.CLAIMED
    winners = [
        u for u in readers if access.visible_studies(u).filter(pk=task.study_id).exists() and u.pk == task.claimed_by_id
    ]
    assert len(winners) == 1
    assert task.offers.count() == 1


@requires_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_cap_holds_when_one_reader_claims_two_tasks_at_once(tenants, centre):
    save_policy(tenants.a.institution, pool_policy(centre.pool))
    tasks = [do_start_reading_process(make_study(tenants.a.institution)).tasks.get() for _ in range(4)]
    reader = centre.readers[0]  # the pool's cap is 3
    for task in tasks[:2]:
        do_claim_reading_task(task, acting_user=reader)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def claim(task):
        try:
            barrier.wait()
            try:
                do_claim_reading_task(task, acting_user=reader)
                outcomes.append("won")
            except TaskRefused as refused:
                outcomes.append(refused.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(task,)) for task in tasks[2:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["cap_reached", "won"]
    assert ReadingTask.objects.filter(claimed_by=reader).count() == 3
