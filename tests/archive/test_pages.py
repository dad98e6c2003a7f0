"""The archive's pages in a real browser: import from media, DICOM nodes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect
from pydicom.fileset import FileSet

from archive.models import DicomNode, Instance, Study
from tests.archive.conftest import make_ct, sample_path, with_fresh_uids, write
from tests.conftest import browser_login

pytestmark = [pytest.mark.browser]


def results(page) -> dict[str, str]:
    page.wait_for_selector("#import-summary[data-done=true]", timeout=30_000)
    rows = page.locator("#import-table tbody tr")
    return {rows.nth(i).locator("td").nth(0).inner_text(): rows.nth(i).locator("td").nth(2).inner_text()
            for i in range(rows.count())}  # fmt: skip


def test_a_technologist_imports_files_and_sees_what_happened_to_each(
    live_url, tenants, storage_dir, browser_context, tmp_path
):
    folder = tmp_path / "upload"
    folder.mkdir()
    ct = with_fresh_uids(sample_path("CT_small.dcm"), folder / "ct.dcm")
    chinese = with_fresh_uids(sample_path("chrX2.dcm"), folder / "chinese.dcm")
    (folder / "letter.txt").write_text("Dear colleague, please find the images enclosed.")
    cut = folder / "cut.dcm"
    cut.write_bytes(ct.read_bytes()[:20000])
    page = browser_login(browser_context(), live_url, tenants.a.technologist.username)
    page.goto(f"{live_url}/archive/import/")
    page.set_input_files("#import-files", [str(ct), str(chinese), str(folder / "letter.txt"), str(cut)])
    seen = results(page)
    assert seen["ct.dcm"] == "stored"
    assert seen["chinese.dcm"] == "stored"
    assert seen["letter.txt"].startswith("refused: the file is not DICOM")
    assert seen["cut.dcm"].startswith("refused: the data set is cut short")
    assert page.locator("#import-totals").inner_text().startswith("2 stored, 0 duplicates, 2 refused")
    assert (
        "王小东" in page.locator("#import-studies").inner_text()
        or "Wang" in page.locator("#import-studies").inner_text()
    )
    assert Instance.objects.count() == 2
    # The same files again: duplicates, nothing stored twice.
    page.set_input_files("#import-files", [str(ct)])
    expect(page.locator("#import-totals")).to_have_text(re.compile(r"^0 stored, 1 duplicates"))
    assert Instance.objects.count() == 2


def make_disc(root: Path) -> tuple[Path, list[str]]:
    """A CD image: a DICOMDIR listing two images, a viewer's readme beside them."""
    first = make_ct(patient_id="CD001", patient_name="DISC^PATIENT")
    second = make_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, patient_id="CD001",
                     patient_name="DISC^PATIENT", instance_number=2)  # fmt: skip
    staging = root.parent / "staging"
    staging.mkdir()
    fileset = FileSet()
    for ds in (first, second):
        fileset.add(write(ds, staging / f"{ds.SOPInstanceUID}.dcm"))
    fileset.write(root)
    (root / "README.TXT").write_text("Insert the disc and run VIEWER.EXE")
    listed = [str(Path(*instance.FileID.split("\\"))) for instance in fileset]
    shutil.rmtree(staging)
    return root, listed


def test_a_disc_is_imported_through_its_dicomdir(live_url, tenants, storage_dir, browser_context, tmp_path):
    disc, listed = make_disc(tmp_path / "CDROM")
    page = browser_login(browser_context(), live_url, tenants.a.technologist.username)
    page.goto(f"{live_url}/archive/import/")
    page.set_input_files("#import-folder", str(disc))
    seen = results(page)
    assert seen["CDROM/DICOMDIR"].startswith("skipped: disc directory: 2 files of 1 studies listed")
    assert seen["CDROM/README.TXT"] == "skipped: not an image listed in the DICOMDIR"
    assert [seen[f"CDROM/{path}"] for path in listed] == ["stored", "stored"]
    study = Study.objects.get()
    assert (study.patient.patient_id, study.num_instances) == ("CD001", 2)


def test_an_institution_admin_adds_a_dicom_node(live_url, tenants, browser_context, db):
    page = browser_login(browser_context(), live_url, tenants.a.institution_admin.username)
    page.goto(f"{live_url}/archive/dicom-nodes/")
    page.fill("input[name=ae_title]", "ALPHA_US")
    page.fill("input[name=host]", "10.1.2.3")
    page.click("#add-node button[type=submit]")
    page.wait_for_selector("text=ALPHA_US may now call the cloud.")
    assert "ALPHA_US" in page.locator("#dicom-nodes").inner_text()
    assert DicomNode.objects.get(ae_title="ALPHA_US").institution == tenants.a.institution
    # A technologist has no such page.
    other = browser_login(browser_context(), live_url, tenants.a.technologist.username)
    response = other.goto(f"{live_url}/archive/dicom-nodes/")
    assert response.status == 404
