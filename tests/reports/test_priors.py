"""A reading task brings its relevant priors with their signed reports, read-only, and takes them back with it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
import pytest
from django.test import TestCase
from pydicom.data import get_testdata_file

from archive.actions import do_complete_study
from archive.ingest import store_instance
from archive.models import Study
from pacs_cloud.lib.uids import new_uid
from pacs_cloud.models import AuditEvent
from reports import actions
from reports.models import Report
from tests.conftest import PASSWORD, api_client, web_client
from tests.workflow.conftest import (
    centre,  # noqa: F401  (fixture)
    save_policy,
)
from workflow.actions import do_claim_reading_task, do_release_reading_task, do_start_reading_process
from workflow.models import TaskPrior

PATIENT_ID = "ZS-0315"


def archive_exam(institution, *, day: str, body_part: str, description: str, sample: str = "CT_small.dcm") -> Study:
    """One image of 张三's exam of ``day`` archived through the real ingest."""
    ds = pydicom.dcmread(get_testdata_file(sample))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "张三"
    ds.PatientID = PATIENT_ID
    ds.IssuerOfPatientID = institution.patient_id_issuer
    ds.StudyDate = day
    ds.PatientSex = "M"
    ds.PatientBirthDate = "19600315"
    ds.StudyTime = "090000"
    ds.BodyPartExamined = body_part
    ds.StudyDescription = description
    ds.AccessionNumber = f"A{day}"
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    with tempfile.TemporaryDirectory() as folder, TestCase.captureOnCommitCallbacks(execute=True):
        path = Path(folder) / "image.dcm"
        ds.save_as(path, enforce_file_format=True)
        instance = store_instance(path, institution=institution).instance
    return Study.objects.select_related("patient").get(pk=instance.series.study_id)


def sign_report(study: Study, author, impression: str) -> Report:
    report, _ = actions.do_create_report(study, acting_user=author)
    content = {**report.draft, "findings": "Left frontal hypodensity.", "impression": impression}
    report = actions.do_autosave_draft(report, acting_user=author, content=content, base_revision=report.draft_revision)
    actions.do_sign_report(report, acting_user=author, password=PASSWORD)
    return Report.objects.get(pk=report.pk)


@pytest.fixture
def follow_up(tenants, centre):  # noqa: F811
    """张三 at hospital a: a head CT of 2025-03-14 with a signed report, a knee MR, and today's follow-up head CT."""
    hospital = tenants.a.institution
    prior = archive_exam(hospital, day="20250314", body_part="HEAD", description="CT HEAD")
    report = sign_report(prior, tenants.a.radiologist, "Small left frontal infarct.")
    unrelated = archive_exam(hospital, day="20250601", body_part="KNEE", description="MR KNEE", sample="MR_small.dcm")
    current = archive_exam(hospital, day="20261102", body_part="HEAD", description="CT HEAD follow-up")
    do_complete_study(current, actor_label="test")
    save_policy(hospital, {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]})
    task = do_start_reading_process(current).tasks.get()
    return {"task": task, "current": current, "prior": prior, "report": report, "unrelated": unrelated}


def routes(study: Study, report: Report | None = None) -> dict[str, str]:
    uid = study.study_instance_uid
    series = study.series.get()
    found = {
        "viewer page": f"/viewer/studies/{study.pk}/",
        "viewer manifest": f"/api/v1/viewer/studies/{study.pk}/",
        "study API": f"/api/v1/studies/{study.pk}/",
        "WADO-RS metadata": f"/dicomweb/studies/{uid}/metadata",
        "QIDO-RS series": f"/dicomweb/studies/{uid}/series",
        "rendered thumbnail": f"/dicomweb/studies/{uid}/series/{series.series_instance_uid}/thumbnail",
        "report page": f"/reports/studies/{study.pk}/",
    }
    if report is not None:
        found["reports API"] = f"/api/v1/reports/{report.pk}/"
    return found


def statuses(user, study: Study, report: Report | None = None) -> dict[str, int]:
    web, api = web_client(user), api_client(user)
    out = {}
    for name, url in routes(study, report).items():
        client = web if name in ("viewer page", "report page") else api
        accept = "image/jpeg" if "thumbnail" in url else "application/dicom+json" if "dicomweb" in url else "*/*"
        out[name] = client.get(url, HTTP_ACCEPT=accept, follow=client is web).status_code
    return out


def qido_uids(user) -> set[str]:
    response = api_client(user).get(f"/dicomweb/studies?PatientID={PATIENT_ID}", HTTP_ACCEPT="application/dicom+json")
    return {row["0020000D"]["Value"][0] for row in (response.json() if response.status_code == 200 else [])}


def test_a_pool_reader_sees_the_prior_and_its_report_while_holding_the_task_and_nothing_after(
    tenants,
    centre,  # noqa: F811
    follow_up,
):
    reader = centre.readers[0]
    prior, report, unrelated, current = (follow_up[k] for k in ("prior", "report", "unrelated", "current"))
    assert set(statuses(reader, prior, report).values()) == {404}

    do_claim_reading_task(follow_up["task"], acting_user=reader)
    assert list(TaskPrior.objects.filter(task=follow_up["task"]).values_list("study_id", flat=True)) == [prior.pk]

    listed = api_client(reader).get(f"/api/v1/studies/{current.pk}/priors/")
    assert listed.status_code == 200
    (shown,) = listed.json()["priors"]
    assert (shown["id"], shown["study_date"]) == (str(prior.pk), "2025-03-14")
    assert [(r["id"], r["impression"]) for r in shown["reports"]] == [(str(report.pk), "Small left frontal infarct.")]
    seen = statuses(reader, prior, report)
    assert set(seen.values()) == {200}, seen
    assert set(statuses(reader, unrelated).values()) == {404}
    assert qido_uids(reader) == {current.study_instance_uid, prior.study_instance_uid}

    # Read-only: no report and no key image on the prior.
    api = api_client(reader)
    assert api.post("/api/v1/reports/", {"study": str(prior.pk)}, format="json").status_code == 403
    instance = prior.series.get().instances.get()
    marked = api.post(f"/api/v1/viewer/studies/{prior.pk}/key-images/", {"instance": str(instance.pk)}, format="json")
    assert marked.status_code == 403
    # Every opening of the prior, and of its report, is audited as such.
    opened = AuditEvent.objects.filter(actor_id=reader.pk, object_id=str(prior.pk), detail__as_prior=True)
    assert opened.filter(action="study.view").exists()
    assert {"study.view", "archive.study.view", "archive.study.metadata"} <= set(
        opened.values_list("action", flat=True)
    )
    assert AuditEvent.objects.filter(
        actor_id=reader.pk, action="report.view", object_id=str(report.pk), detail__as_prior=True
    ).exists()
    # The current study is not a prior: its openings are plain.
    web_client(reader).get(f"/viewer/studies/{current.pk}/")
    assert not AuditEvent.objects.filter(object_id=str(current.pk), detail__as_prior=True).exists()

    do_release_reading_task(follow_up["task"], acting_user=reader)
    assert set(statuses(reader, prior, report).values()) == {404}
    assert set(statuses(reader, current).values()) == {404}
    assert qido_uids(reader) == set()
    assert api_client(reader).get(f"/api/v1/studies/{current.pk}/priors/").status_code == 404
    assert not TaskPrior.objects.exists()


def test_the_hospitals_own_readers_see_every_prior_and_outsiders_none(tenants, follow_up):
    current, prior = follow_up["current"], follow_up["prior"]
    listed = api_client(tenants.a.clinician).get(f"/api/v1/studies/{current.pk}/priors/")
    assert [p["id"] for p in listed.json()["priors"]] == [str(prior.pk)]
    assert AuditEvent.objects.filter(action="archive.study.priors", object_id=str(current.pk)).exists()
    # Their own openings of an earlier study are no prior grant's.
    web_client(tenants.a.radiologist).get(f"/viewer/studies/{prior.pk}/")
    assert not AuditEvent.objects.filter(object_id=str(prior.pk), detail__as_prior=True).exists()
    for outsider in (tenants.b.radiologist, tenants.c.clinician):
        assert api_client(outsider).get(f"/api/v1/studies/{current.pk}/priors/").status_code == 404


def test_a_prior_stays_while_another_held_task_still_lists_it(
    tenants,
    centre,  # noqa: F811
    follow_up,
):
    reader = centre.readers[0]
    second = archive_exam(tenants.a.institution, day="20261103", body_part="HEAD", description="CT HEAD")
    do_complete_study(second, actor_label="test")
    other_task = do_start_reading_process(second).tasks.get()
    do_claim_reading_task(follow_up["task"], acting_user=reader)
    do_claim_reading_task(other_task, acting_user=reader)
    # The second follow-up's priors include the first follow-up (a full grant too) and the 2025 CT.
    assert set(TaskPrior.objects.filter(task=other_task).values_list("study_id", flat=True)) == {
        follow_up["current"].pk,
        follow_up["prior"].pk,
    }
    do_release_reading_task(follow_up["task"], acting_user=reader)
    assert statuses(reader, follow_up["prior"])["WADO-RS metadata"] == 200
    assert statuses(reader, follow_up["current"])["WADO-RS metadata"] == 200  # now only as a prior
    do_release_reading_task(other_task, acting_user=reader)
    assert statuses(reader, follow_up["prior"])["WADO-RS metadata"] == 404
    assert statuses(reader, follow_up["current"])["WADO-RS metadata"] == 404
