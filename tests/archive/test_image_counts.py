"""The archived report is the report, not a series of images, on every page that counts images."""

from __future__ import annotations

import io

import pytest
from django.urls import reverse
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive import query as q
from archive.ingest import IngestSession, Source, store_instance, store_part10
from archive.models import Study
from tests.archive.conftest import make_ct, write
from tests.conftest import api_client

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def report_document(study_uid: str) -> bytes:
    """An Encapsulated PDF as the reports app archives it with a signed report (modality DOC)."""
    ds = Dataset()
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE", "P0001", "19700101", "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DOC"
    ds.SeriesNumber = 9900
    ds.InstanceNumber = 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4 a report\n%%EOF\n"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def reported_ct(tenants, storage_dir, tmp_path) -> Study:
    """Two CT series (2 and 1 images) and the archived report."""
    study_uid = generate_uid()
    for series_number, images in [(1, 2), (2, 1)]:
        series_uid = generate_uid()
        for number in range(images):
            ds = make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=number + 1)
            ds.SeriesNumber = series_number
            store_instance(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), institution=tenants.a.institution)
    session = IngestSession(Source("report", "reports"))
    store_part10(report_document(study_uid), institution=tenants.a.institution, session=session)
    return Study.objects.get(study_instance_uid=study_uid)


def test_the_study_counts_images_apart_from_the_report(reported_ct):
    assert (reported_ct.num_series, reported_ct.num_instances) == (3, 4)
    assert (reported_ct.image_series, reported_ct.image_instances) == (2, 3)
    assert reported_ct.image_modalities == ["CT"]
    assert reported_ct.has_report_document


def test_dicomweb_still_describes_every_stored_object(tenants, reported_ct):
    query = q.Query(level=q.STUDY, keys={q.BY_KEYWORD["ModalitiesInStudy"].tag: "DOC"}, fuzzy=False)
    rows, _ = q.search(query, Study.objects.filter(institution=tenants.a.institution), maximum=10)
    assert rows == [reported_ct]


def test_the_technologists_home_shows_image_modalities_and_counts(client, tenants, reported_ct):
    client.force_login(tenants.a.technologist)
    page = client.get(reverse("home")).content.decode()
    row = page[page.index("<td>P0001</td>") :]
    row = row[: row.index("</tr>")]
    assert "<td>CT" in row and "DOC" not in row and "CTDOC" not in row
    assert '<span class="badge">Report</span>' in row
    assert "<td>3</td>" in row


def test_the_viewer_lists_image_series_and_image_modalities(tenants, reported_ct):
    manifest = api_client(tenants.a.radiologist).get(reverse("viewer-api-study", args=[reported_ct.pk])).json()
    assert [s["modality"] for s in manifest["series"]] == ["CT", "CT"]
    assert manifest["modalities"] == "CT"
    assert manifest["has_report_document"] is True


def test_the_reading_task_page_counts_image_series(client, tenants, reported_ct):
    from tests.workflow.conftest import save_policy
    from workflow.actions import do_start_reading_process

    save_policy(tenants.a.institution, {"rules": [{"name": "Own", "offer_to": [{"kind": "own"}]}]})
    Study.objects.filter(pk=reported_ct.pk).update(state=Study.State.COMPLETE)
    task = do_start_reading_process(Study.objects.get(pk=reported_ct.pk)).tasks.get()
    client.force_login(tenants.a.radiologist)
    assert client.post(f"/workflow/tasks/{task.pk}/claim/").status_code == 302
    page = client.get(f"/workflow/tasks/{task.pk}/").content.decode()
    assert "2 series, 3 images (CT)" in page and "Report archived" in page


def test_the_studies_api_gives_both_counts(tenants, reported_ct):
    found = api_client(tenants.a.radiologist).get(f"/api/v1/studies/{reported_ct.pk}/").json()
    assert (found["num_series"], found["modalities"]) == (3, ["CT", "DOC"])
    assert (found["image_series"], found["image_instances"], found["image_modalities"]) == (2, 3, ["CT"])
    assert found["has_report_document"] is True
