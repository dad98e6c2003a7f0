"""The technologists' pages in headless Chromium, with live updates over WebSockets."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from archive.ingest import store_instance
from archive.models import Study
from pacs_cloud.lib.uids import new_uid
from tests.conftest import api_client, browser_login
from worklist.models import Order, ReconciliationItem

from .conftest import local, make_order, make_patient, today

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"


def elsewhere(work, *args, **kwargs):
    """Run ``work`` in its own thread, as the DICOM service or another web request would.

    Playwright keeps an event loop in the test thread, from which the
    channel layer cannot be called synchronously.
    """
    result = []
    thread = threading.Thread(target=lambda: result.append(work(*args, **kwargs)))
    thread.start()
    thread.join(timeout=30)
    return result[0]


def unordered_image(patient_id: str, name: str, tmp_path: Path) -> Path:
    """A CT image from a modality that did not use the worklist: its own UIDs, no accession number."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient_id, name, ""
    ds.StudyDate = today().strftime("%Y%m%d")
    path = tmp_path / "unordered.dcm"
    ds.save_as(path)
    return path


def test_an_unmatched_study_is_queued_live_and_linked_to_its_exam(live_url, browser_context, tenants, sites, tmp_path):
    site = sites["a"]
    patient = elsewhere(make_patient, site.institution, "CHEN^JING=陈^静", patient_id="ACH-77")
    order = elsewhere(make_order, site, patient, when=local(today(), 9))
    page = browser_login(browser_context(), live_url, tenants.a.technologist.username)
    page.goto(f"{live_url}/worklist/reconciliation/")
    page.wait_for_selector("#live-status[data-state=live]")
    assert "Every received study is linked" in page.inner_text("#reconciliation")

    elsewhere(store_instance, unordered_image("ACH-77", "CHEN^JING", tmp_path), institution=site.institution)
    study = Study.objects.get()
    row = page.wait_for_selector("tr[data-item]:has-text('ACH-77')")
    assert "CHEN, JING" in row.inner_text()

    row.query_selector("text=Reconcile").click()
    candidate = page.wait_for_selector(f"tr[data-order='{order.pk}']")
    assert order.accession_number in candidate.inner_text()
    candidate.query_selector("button:has-text('Link to this exam')").click()
    page.wait_for_selector(f"text=Study linked to exam {order.accession_number}")
    assert "Every received study is linked" in page.inner_text("#reconciliation")

    order.refresh_from_db()
    assert order.study == study
    assert order.state == Order.State.IN_PROGRESS
    study.refresh_from_db()
    assert study.patient == patient  # the registered patient, not the one the images created
    item = ReconciliationItem.objects.get(study=study)
    assert item.resolution == ReconciliationItem.Resolution.LINKED
    assert item.resolved_by == tenants.a.technologist


def test_the_day_worklist_shows_a_new_exam_without_reloading(live_url, browser_context, tenants, sites):
    page = browser_login(browser_context(), live_url, tenants.a.technologist.username)
    page.goto(f"{live_url}/worklist/")
    page.wait_for_selector("#live-status[data-state=live]")
    assert "No exams scheduled" in page.inner_text("#orders")

    desk = api_client(tenants.a.technologist)
    created = elsewhere(
        desk.post,
        "/api/v1/orders/",
        {
            "patient": {"name": "ZHAO^LEI=赵^磊", "patient_id": "ACH-88"},
            "procedure": str(sites["a"].ct.pk),
            "station": str(sites["a"].ct_station.pk),
            "scheduled_at": local(today(), 16).isoformat(),
            "priority": "stat",
        },
        format="json",
    ).json()
    row = page.wait_for_selector(f"tr[data-order='{created['id']}']")
    assert "赵磊 (ZHAO, LEI)" in row.inner_text() and "STAT" in row.inner_text()

    row.query_selector("button:has-text('Arrived')").click()
    page.wait_for_selector(f"tr[data-order='{created['id']}'] .badge.state.arrived")
    assert Order.objects.get(pk=created["id"]).state == Order.State.ARRIVED


def test_a_technologist_registers_an_exam_for_a_new_patient(live_url, browser_context, tenants, sites):
    page = browser_login(browser_context(), live_url, tenants.a.technologist.username)
    page.goto(f"{live_url}/worklist/register/")
    page.fill("input[name=new-ideographic_family]", "欧阳")
    page.fill("input[name=new-ideographic_given]", "娜娜")
    page.fill("input[name=new-birth_date]", "1992-08-30")
    page.select_option("select[name=new-sex]", "F")
    page.select_option("select[name=procedure]", str(sites["a"].mr.pk))
    # Only the MR station fits an MR procedure; it is chosen for the technologist.
    assert page.input_value("select[name=station]") == str(sites["a"].mr_station.pk)
    page.fill("input[name=scheduled_time]", "11:45")
    page.select_option("select[name=priority]", "urgent")
    page.fill("textarea[name=clinical_info]", "Headaches for two weeks")
    page.click("button:has-text('Register exam')")
    page.wait_for_selector("text=registered for")
    order = Order.objects.get()
    assert order.patient.name == "OUYANG^NANA=欧阳^娜娜"
    assert (order.modality, order.priority, order.scheduled_time.strftime("%H:%M")) == ("MR", "urgent", "11:45")
    assert "Headaches for two weeks" in page.inner_text("main")
