"""Prefetch: offering a reading task decodes its study's priors into the viewer's volume cache."""

from __future__ import annotations

import pytest
from django.test import TestCase
from pydicom.uid import generate_uid

from archive.models import Study
from pacs_cloud import celery_app
from tests.workflow.conftest import (
    centre,  # noqa: F401  (fixture)
    save_policy,
)
from viewer import mpr, render
from viewer.caches import decoded_cache
from workflow.actions import do_start_reading_process

from .conftest import sample, store, with_new_uids
from .phantom import ct_datasets


@pytest.fixture
def eager_celery():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def head_ct(institution, tmp_path, day: str, slices: int) -> Study:
    datasets, _ = ct_datasets(slices=slices, size=16)
    study_uid, series_uid = generate_uid(), generate_uid()
    for ds in datasets:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "张三", "ZS-9", "M", "19600315"
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.StudyDate, ds.BodyPartExamined, ds.StudyDescription = day, "HEAD", "CT HEAD"
        store(ds, institution, tmp_path)
    return Study.objects.get(institution=institution, study_instance_uid=study_uid)


def test_an_offered_task_has_its_priors_decoded(tenants, centre, tmp_path, eager_celery):  # noqa: F811
    hospital = tenants.a.institution
    prior = head_ct(hospital, tmp_path, "20250314", slices=6)
    # A single radiograph of the same head: a prior too, but no volume to decode.
    xray = with_new_uids(sample("CT_small.dcm"))
    xray.PatientName, xray.PatientID, xray.PatientSex, xray.PatientBirthDate = "张三", "ZS-9", "M", "19600315"
    xray.SpecificCharacterSet = "ISO_IR 192"
    xray.StudyDate, xray.BodyPartExamined = "20240101", "HEAD"
    store(xray, hospital, tmp_path)
    current = head_ct(hospital, tmp_path, "20261102", slices=3)
    save_policy(hospital, {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]})
    decoded_cache().clear()
    series = prior.series.get()
    assert decoded_cache().get(mpr.volume_key(series)) is None

    with TestCase.captureOnCommitCallbacks(execute=True):
        do_start_reading_process(current)

    volume = decoded_cache().get(mpr.volume_key(series))
    assert volume is not None and volume.data.shape[0] == 6
    # The prior's slices now render from the decoded volume, without reading their files.
    instance = series.instances.order_by("instance_number").first()
    assert render._frame_from_volume((render.instance_cache_id(instance), 0)) is not None
    # The current study itself is not a prior of its own.
    assert decoded_cache().get(mpr.volume_key(current.series.get())) is None
