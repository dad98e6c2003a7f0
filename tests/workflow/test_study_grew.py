"""A routed study that receives more instances: its reading continues on the whole study, and its reader is told."""

from __future__ import annotations

import asyncio
import datetime as dt

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from archive.actions import do_complete_stable_studies
from archive.ingest import store_instance
from archive.models import Study
from pacs_cloud.models import Transition
from pacs_cloud.push import user_group
from tests.archive.conftest import make_ct, storage_dir, write  # noqa: F401  (a fixture)
from workflow.actions import do_claim_reading_task
from workflow.models import ProcessInstance, ReadingTask

S = Study.State


def complete_now(study: Study, capture) -> None:
    """Past the stability window: the sweep completes the study and the workflow routes it."""
    Study.objects.filter(pk=study.pk).update(last_instance_at=timezone.now() - dt.timedelta(days=1))
    with capture(execute=True):
        assert do_complete_stable_studies() == 1


def pushes_to(user):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(user_group(user.pk), channel)

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), timeout=5)

    return lambda: async_to_sync(receive)()


def test_instances_after_routing_reopen_the_study_and_its_reader_is_told_it_grew(
    tenants,
    storage_dir,  # noqa: F811
    tmp_path,
    django_capture_on_commit_callbacks,
):
    first = make_ct(patient_id="G1", instance_number=1)
    with django_capture_on_commit_callbacks(execute=True):
        stored = store_instance(write(first, tmp_path / "1.dcm"), institution=tenants.a.institution)
    study = stored.instance.series.study
    complete_now(study, django_capture_on_commit_callbacks)
    study.refresh_from_db()
    assert study.state == S.ROUTED
    task = ReadingTask.objects.get(study=study)
    reader = tenants.a.radiologist
    with django_capture_on_commit_callbacks(execute=True):
        task = do_claim_reading_task(task, acting_user=reader)
    receive = pushes_to(reader)

    # The rest of the series arrives after the study was routed.
    for number in (2, 3):
        late = make_ct(
            study_uid=first.StudyInstanceUID,
            series_uid=first.SeriesInstanceUID,
            patient_id="G1",
            instance_number=number,
        )
        with django_capture_on_commit_callbacks(execute=True):
            store_instance(write(late, tmp_path / f"{number}.dcm"), institution=tenants.a.institution)
    study.refresh_from_db()
    assert study.state == S.RECEIVING  # its completeness is open again
    complete_now(study, django_capture_on_commit_callbacks)

    study.refresh_from_db()
    assert (study.state, study.num_instances) == (S.ROUTED, 3)
    # The same process and task, still the reader's, now on the whole study.
    assert ProcessInstance.objects.filter(study=study).count() == 1
    task.refresh_from_db()
    assert (task.state, task.claimed_by_id, task.study_id) == (ReadingTask.State.CLAIMED, reader.pk, study.pk)
    note = Transition.objects.get(object_id=task.pk, method="study_grew")
    assert note.reason == "the study grew to 3 instances after it was routed"
    message = receive()
    assert message["topic"] == "workflow.task.study_grew"
    assert message["data"] == {"id": str(task.pk), "state": "claimed", "instances": 3}
