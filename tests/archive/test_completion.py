"""Study completion after a stability window, and the Study state machine."""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from archive import signals, tasks
from archive.actions import do_complete_stable_studies
from archive.ingest import store_instance
from archive.models import ArchivePolicy, Study
from pacs_cloud.models import Transition
from tests.archive.conftest import make_ct, write

S = Study.State
METHODS = ["complete", "reopen", "route", "report", "amend"]
# (source, method) -> target; every pair not listed is not allowed.
TABLE = {
    (S.RECEIVING, "complete"): S.COMPLETE,
    (S.COMPLETE, "reopen"): S.RECEIVING,
    (S.ROUTED, "reopen"): S.RECEIVING,
    (S.COMPLETE, "route"): S.ROUTED,
    (S.COMPLETE, "report"): S.REPORTED,
    (S.ROUTED, "report"): S.REPORTED,
    (S.REPORTED, "amend"): S.AMENDED,
    (S.AMENDED, "amend"): S.AMENDED,
}


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("method", METHODS)
def test_study_state_machine(source, method):
    study = Study(state=source)
    target = TABLE.get((source, method))
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(study, method)()
    else:
        getattr(study, method)()
        assert study.state == target


@pytest.fixture
def received(tenants, storage_dir, tmp_path):
    """A study at institution a whose last instance arrived ``age`` seconds ago."""

    def make(age: float, institution=None) -> Study:
        ds = make_ct()
        store_instance(
            write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), institution=institution or tenants.a.institution
        )
        study = Study.objects.get(study_instance_uid=ds.StudyInstanceUID)
        Study.objects.filter(pk=study.pk).update(last_instance_at=timezone.now() - dt.timedelta(seconds=age))
        return study

    return make


def test_a_study_becomes_complete_after_the_stability_window(received, django_capture_on_commit_callbacks):
    window = settings.STUDY_STABILITY_SECONDS
    old, fresh = received(window + 5), received(window - 30)
    completed = []

    def on_completed(sender, study, **kwargs):
        completed.append(study.pk)

    signals.study_completed.connect(on_completed)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert do_complete_stable_studies() == 1
            assert do_complete_stable_studies() == 0  # safe to run twice
    finally:
        signals.study_completed.disconnect(on_completed)
    assert completed == [old.pk]
    old.refresh_from_db()
    fresh.refresh_from_db()
    # (The reading workflow, listening to study_completed, may route it at once.)
    assert old.state in (S.COMPLETE, S.ROUTED) and fresh.state == S.RECEIVING
    assert old.completed_at is not None
    transition = Transition.objects.filter(object_id=old.pk).order_by("id").first()
    assert (transition.source, transition.target, transition.actor_label) == (
        "receiving",
        "complete",
        "stability sweep",
    )


def test_each_institution_may_set_its_own_window(received, tenants):
    ArchivePolicy.objects.create(institution=tenants.b.institution, stability_seconds=10)
    at_a, at_b = received(20, tenants.a.institution), received(20, tenants.b.institution)
    assert do_complete_stable_studies() == 1
    at_a.refresh_from_db()
    at_b.refresh_from_db()
    assert (at_a.state, at_b.state) == (S.RECEIVING, S.COMPLETE)


def test_a_late_instance_reopens_a_complete_study(received, tenants, tmp_path, django_capture_on_commit_callbacks):
    study = received(settings.STUDY_STABILITY_SECONDS + 1)
    do_complete_stable_studies()
    late = make_ct(study_uid=study.study_instance_uid, patient_id="P0001", instance_number=2)
    with django_capture_on_commit_callbacks(execute=True):
        store_instance(write(late, tmp_path / "late.dcm"), institution=tenants.a.institution)
    study.refresh_from_db()
    assert study.state == S.RECEIVING
    assert study.num_instances == 2


def test_a_late_instance_reopens_a_routed_study_too(received, tenants, tmp_path, django_capture_on_commit_callbacks):
    study = received(settings.STUDY_STABILITY_SECONDS + 1)
    do_complete_stable_studies()
    Study.objects.filter(pk=study.pk).update(state=S.ROUTED)
    late = make_ct(study_uid=study.study_instance_uid, patient_id="P0001", instance_number=2)
    with django_capture_on_commit_callbacks(execute=True):
        store_instance(write(late, tmp_path / "late.dcm"), institution=tenants.a.institution)
    study.refresh_from_db()
    # Complete again after another window; the reading workflow continues its process then.
    assert study.state == S.RECEIVING
    assert study.num_instances == 2


def test_a_late_instance_leaves_a_reported_study_where_it_is(
    received, tenants, tmp_path, django_capture_on_commit_callbacks
):
    study = received(settings.STUDY_STABILITY_SECONDS + 1)
    Study.objects.filter(pk=study.pk).update(state=S.REPORTED)
    late = make_ct(study_uid=study.study_instance_uid, patient_id="P0001", instance_number=2)
    with django_capture_on_commit_callbacks(execute=True):
        store_instance(write(late, tmp_path / "late.dcm"), institution=tenants.a.institution)
    study.refresh_from_db()
    assert study.state == S.REPORTED
    assert study.num_instances == 2


def test_the_sweep_is_a_periodic_task(received):
    entry = settings.CELERY_BEAT_SCHEDULE["archive-complete-stable-studies"]
    assert entry["task"] == "archive.tasks.complete_stable_studies"
    assert entry["schedule"] <= 10
    received(settings.STUDY_STABILITY_SECONDS + 1)
    assert tasks.complete_stable_studies() == 1
