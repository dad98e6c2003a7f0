"""The path of a study: complete -> routed -> offered -> claimed -> final."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.http import Http404
from django.utils import timezone

from archive import access
from archive.actions import do_complete_study
from archive.models import Study
from pacs_cloud.fsm import history
from pacs_cloud.models import AuditEvent
from tests.workflow.conftest import make_study, save_policy
from workflow.access import offered_tasks
from workflow.actions import (
    TaskRefused,
    do_cancel_process,
    do_claim_reading_task,
    do_finalize_task,
    do_mark_task_drafting,
    do_release_reading_task,
    do_start_reading_process,
)
from workflow.models import ProcessInstance, ReadingTask


def own_and_pool(pool):
    return {
        "rules": [
            {"name": "Everything", "offer_to": [{"kind": "own"}, {"kind": "pool", "pool": str(pool.pk)}]},
        ]
    }


def test_a_completed_study_is_routed_offered_claimed_and_finalised(tenants, centre, django_capture_on_commit_callbacks):
    save_policy(tenants.a.institution, own_and_pool(centre.pool))
    study = make_study(tenants.a.institution, state=Study.State.RECEIVING)
    with django_capture_on_commit_callbacks(execute=True):
        assert do_complete_study(study, actor_label="test")
    study.refresh_from_db()
    assert study.state == Study.State.ROUTED
    task = ReadingTask.objects.get(study=study)
    assert task.state == ReadingTask.State.OFFERED
    assert task.sla_minutes == 720  # the agreement's routine SLA
    # Offered at once to the hospital's own radiologist and to every credentialled pool member.
    assert task in offered_tasks(tenants.a.radiologist)
    assert all(task in offered_tasks(r) for r in centre.readers)
    assert task not in offered_tasks(tenants.c.radiologist)

    reader = centre.readers[0]
    with pytest.raises(Http404):
        access.access_study(reader, pk=study.pk)
    do_claim_reading_task(task, acting_user=reader)
    assert access.access_study(reader, pk=study.pk) == study
    assert task not in offered_tasks(centre.readers[1])
    do_mark_task_drafting(task, acting_user=reader)
    do_finalize_task(task, acting_user=reader)
    task.refresh_from_db()
    assert task.state == ReadingTask.State.FINAL
    # The signer keeps read access; the process is complete.
    assert access.access_study(reader, pk=study.pk) == study
    process = ProcessInstance.objects.get(study=study)
    assert process.state == ProcessInstance.State.COMPLETED
    assert [t.target for t in history(task)] == ["offered", "claimed", "drafting", "final"]
    assert [(t.source, t.target, t.method) for t in history(process)] == [("running", "completed", "complete")]


def test_cancelling_a_process_writes_its_transition(tenants, centre):
    save_policy(tenants.a.institution, own_and_pool(centre.pool))
    process = do_start_reading_process(make_study(tenants.a.institution))
    assert do_cancel_process(process, actor=tenants.a.institution_admin, reason="order cancelled") == 1
    process.refresh_from_db()
    assert process.state == ProcessInstance.State.CANCELLED
    (row,) = history(process)
    assert (row.source, row.target, row.actor, row.reason) == (
        "running",
        "cancelled",
        tenants.a.institution_admin,
        "order cancelled",
    )
    assert AuditEvent.objects.filter(action="workflow.processinstance.cancel", object_id=str(process.pk)).exists()


def test_releasing_revokes_the_grant_and_reoffers(tenants, centre):
    save_policy(tenants.a.institution, own_and_pool(centre.pool))
    study = make_study(tenants.a.institution)
    task = do_start_reading_process(study).tasks.get()
    reader = centre.readers[1]
    do_claim_reading_task(task, acting_user=reader)
    do_release_reading_task(task, acting_user=reader)
    task.refresh_from_db()
    assert task.state == ReadingTask.State.RELEASED
    assert not access.visible_studies(reader).filter(pk=study.pk).exists()
    assert task in offered_tasks(centre.readers[0])


def test_a_second_claim_is_refused(tenants, centre):
    save_policy(tenants.a.institution, own_and_pool(centre.pool))
    task = do_start_reading_process(make_study(tenants.a.institution)).tasks.get()
    do_claim_reading_task(task, acting_user=centre.readers[0])
    with pytest.raises(TaskRefused) as refused:
        do_claim_reading_task(task, acting_user=centre.readers[1])
    assert refused.value.code == "not_open"


def test_routing_twice_starts_one_process(tenants, centre):
    study = make_study(tenants.a.institution)
    first = do_start_reading_process(study)
    assert do_start_reading_process(study) == first
    assert ReadingTask.objects.filter(study=study).count() == 1


def test_a_backlog_is_routed_in_batches_and_one_bad_study_waits_for_the_sweep(tenants, centre, monkeypatch):
    from workflow import actions

    save_policy(tenants.a.institution, own_and_pool(centre.pool))
    studies = [make_study(tenants.a.institution) for _ in range(5)]
    real_facts = actions.study_facts

    def facts(study):
        if study.pk == studies[2].pk:
            raise ValueError("unreadable order")
        return real_facts(study)

    monkeypatch.setattr(actions, "study_facts", facts)
    assert actions.do_route_studies(studies, batch=2) == 4
    states = [Study.objects.get(pk=s.pk).state for s in studies]
    assert states == ["routed", "routed", "complete", "routed", "routed"]
    assert ReadingTask.objects.filter(state="offered").count() == 4
    monkeypatch.setattr(actions, "study_facts", real_facts)
    # The sweep leaves a study the live signal may still be routing alone for a minute.
    Study.objects.filter(pk=studies[2].pk).update(completed_at=timezone.now() - timedelta(minutes=5))
    assert actions.do_sweep_reading_tasks()["routed"] == 1
    assert Study.objects.get(pk=studies[2].pk).state == "routed"


def test_a_study_archived_from_a_real_dicom_file_is_routed_on_its_own_attributes(
    tenants, centre, tmp_path, settings, django_capture_on_commit_callbacks
):
    from pathlib import Path

    import pydicom
    from pydicom.data import get_testdata_file

    from archive.ingest import store_instance

    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    source.BodyPartExamined = "CHEST"
    source.PatientBirthDate = "19600101"
    source.StudyDate = "20260102"
    path = tmp_path / "ct.dcm"
    source.save_as(path)
    save_policy(
        tenants.a.institution,
        {
            "rules": [
                {
                    "name": "Chest CT",
                    "when": {"modalities": ["CT"], "body_parts": ["CHEST"], "min_age": 60},
                    "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}],
                }
            ]
        },
    )
    study = store_instance(Path(path), institution=tenants.a.institution).instance.series.study
    with django_capture_on_commit_callbacks(execute=True):
        do_complete_study(study, actor_label="stability sweep")
    process = ProcessInstance.objects.get(study=study)
    assert process.rule_name == "Chest CT"
    assert process.facts["source"] == "images" and process.facts["patient_age"] == 66
    task = process.tasks.get()
    assert (task.modality, task.body_part) == ("CT", "CHEST")
    assert task in offered_tasks(centre.readers[1])


def test_without_a_birth_date_the_age_comes_from_patients_age(tenants, tmp_path, settings):
    from pathlib import Path

    import pydicom
    from pydicom.data import get_testdata_file

    from archive.ingest import store_instance
    from workflow.facts import study_facts

    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    source.PatientBirthDate = ""
    source.PatientAge = "007Y"
    path = tmp_path / "child.dcm"
    source.save_as(path)
    study = store_instance(Path(path), institution=tenants.a.institution).instance.series.study
    assert study_facts(study).patient_age == 7
