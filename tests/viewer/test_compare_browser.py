"""Comparison in Chromium: a pool reader reads a follow-up CT beside its prior, slices in step by position."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from archive.actions import do_complete_study
from archive.models import Study
from reports import actions as report_actions
from reports.models import Report
from tests.conftest import PASSWORD, browser_login
from tests.workflow.conftest import (
    centre,  # noqa: F401  (fixture)
    save_policy,
)
from viewer.hanging.models import HangingProtocol
from workflow.actions import do_claim_reading_task, do_release_reading_task, do_start_reading_process
from workflow.models import ReadingTask

from .conftest import store
from .phantom import ct_datasets

pytestmark = pytest.mark.browser


def exam(
    institution, tmp_path, *, day: str, slices: int, gap: float, start: float, part: str = "HEAD", sagittal_of=None
) -> Study:
    """张三's head CT of ``day``: ``slices`` axial slices ``gap`` mm apart from z = ``start``.

    ``sagittal_of``: instead, a sagittal series of that study (slices along x from ``start``).
    """
    orientation = (0, 1, 0, 0, 0, -1) if sagittal_of else (1, 0, 0, 0, 1, 0)
    datasets, _ = ct_datasets(slices=slices, gap=gap, size=32, orientation=orientation)
    study_uid = sagittal_of.study_instance_uid if sagittal_of else generate_uid()
    series_uid = generate_uid()
    for index, ds in enumerate(datasets):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "张三", "ZS-2", "M", "19600315"
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.IssuerOfPatientID = institution.patient_id_issuer
        ds.StudyDate, ds.StudyDescription, ds.BodyPartExamined = day, f"CT {part}", part
        ds.AccessionNumber = f"A{day}"
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        if sagittal_of:  # through the axial slab: y and z span the axial series' extent
            ds.SeriesNumber, ds.SeriesDescription = 3, "Sagittal"
            ds.ImagePositionPatient = [f"{start + gap * index:.4f}", "-11.2", "-30.0"]
        else:
            ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{start + gap * index:.4f}"]
        store(ds, institution, tmp_path)
    return Study.objects.get(institution=institution, study_instance_uid=study_uid)


@pytest.fixture
def reading(tenants, centre, live_url, tmp_path):  # noqa: F811
    hospital = tenants.a.institution
    save_policy(hospital, {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]})
    # The prior: 5 mm slices from -100; the follow-up: 2.5 mm slices from -90.
    prior = exam(hospital, tmp_path, day="20250314", slices=12, gap=5.0, start=-100.0)
    report, _ = report_actions.do_create_report(prior, acting_user=tenants.a.radiologist)
    content = {**report.draft, "findings": "Left frontal hypodensity.", "impression": "Small left frontal infarct."}
    report = report_actions.do_autosave_draft(
        report, acting_user=tenants.a.radiologist, content=content, base_revision=report.draft_revision
    )
    report_actions.do_sign_report(report, acting_user=tenants.a.radiologist, password=PASSWORD)
    knee = exam(hospital, tmp_path, day="20250601", slices=3, gap=3.0, start=0.0, part="KNEE")
    current = exam(hospital, tmp_path, day="20261102", slices=24, gap=2.5, start=-90.0)
    exam(hospital, tmp_path, day="20261102", slices=6, gap=4.0, start=-10.0, sagittal_of=current)
    do_complete_study(current, actor_label="test")  # routes the study at once (no transaction to wait for)
    task = ReadingTask.objects.filter(study=current).first() or do_start_reading_process(current).tasks.get()
    do_claim_reading_task(task, acting_user=centre.readers[0])
    return {"task": task, "current": current, "prior": prior, "knee": knee, "reader": centre.readers[0]}


def nearest_prior_index(z: float) -> int:
    positions = [-100.0 + 5.0 * i for i in range(12)]
    return min(range(12), key=lambda i: abs(positions[i] - z))


def test_a_pool_reader_compares_with_the_prior_in_step_by_position(tenants, reading, live_url, browser_context):
    reader = reading["reader"]
    page = browser_login(browser_context(viewport={"width": 1280, "height": 800}), live_url, reader.username)
    page.goto(f"{live_url}/viewer/studies/{reading['current'].pk}/")
    page.click("#compare-priors")
    page.wait_for_selector("#compare[data-ready=true]")
    current, prior = page.locator(".pane.current").first, page.locator(".pane.prior").first
    page.wait_for_function("() => document.querySelectorAll('.pane[data-shown]').length === 2")
    assert prior.get_attribute("data-study") == str(reading["prior"].pk)

    # The prior's report beside it; the unrelated knee MR is not offered.
    assert page.locator("#prior-list button").count() == 1
    assert "Small left frontal infarct." in page.locator("#prior-report").inner_text()
    assert "2025-03-14" in page.locator("#prior-list").inner_text()

    # Scrolling the follow-up moves the prior to the slice at the same position, not the same index.
    current.hover()
    seen = set()
    for _ in range(9):
        page.mouse.wheel(0, 120)
        index = int(current.get_attribute("data-index"))
        z = -90.0 + 2.5 * index
        expected = nearest_prior_index(z)
        page.wait_for_function(
            "([i]) => document.querySelector('.pane.prior').dataset.index === String(i)", arg=[expected]
        )
        assert abs(float(current.get_attribute("data-z")) - z) < 0.01
        seen.add((index, expected))
    assert any(i != p for i, p in seen)  # position, not index
    prior.hover()
    page.mouse.wheel(0, -120)  # the prior leads too: the follow-up follows
    prior_z = float(prior.get_attribute("data-z"))
    page.wait_for_function(
        "([z]) => Math.abs(Number(document.querySelector('.pane.current').dataset.z) - z) <= 1.25", arg=[prior_z]
    )

    # Window/level linked on request.
    page.check("#link-window")
    box = current.bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 140, box["y"] + 160, steps=4)
    page.mouse.up()
    assert current.get_attribute("data-window") == prior.get_attribute("data-window") != "40,400"
    # Zoom not linked unless asked.
    page.click("button[data-tool=zoom]")
    page.mouse.move(box["x"] + 100, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 100, box["y"] + 120, steps=4)
    page.mouse.up()
    assert float(current.get_attribute("data-zoom")) > 1.2 and prior.get_attribute("data-zoom") == "1.00"
    page.check("#link-zoom")
    page.mouse.move(box["x"] + 100, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 100, box["y"] + 180, steps=2)
    page.mouse.up()
    assert current.get_attribute("data-zoom") == prior.get_attribute("data-zoom")

    page.click("button[data-layout='2x2']")
    page.wait_for_function("() => document.querySelectorAll('.pane[data-shown]').length === 4")
    # This layout, with a narrower window on every pane, saved as the reader's own hanging protocol...
    page.click("button[data-tool=window]")
    box = current.bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 60, box["y"] + 120, steps=3)
    page.mouse.up()
    window = current.get_attribute("data-window")
    page.click("#save-layout")
    page.wait_for_function("() => document.getElementById('protocol-name').textContent.startsWith('Saved')")
    saved = HangingProtocol.objects.get(user=reader)
    assert (saved.layout, saved.modality, saved.body_region, len(saved.panes)) == ("2x2", "CT", "HEAD", 4)
    # ...applies when the study is opened again.
    page.reload()
    page.wait_for_selector("#compare[data-ready=true]")
    page.wait_for_function("() => document.querySelectorAll('.pane[data-shown]').length === 4")
    assert page.locator("#compare").get_attribute("data-protocol") == str(saved.pk)
    assert {page.locator(".pane").nth(i).get_attribute("data-window") for i in range(4)} == {window}
    # Reference lines: the follow-up's sagittal series crosses its axial one.
    page.wait_for_function("() => document.querySelector('.pane.current').dataset.referenceLines === '1'")
    assert page.locator(".pane.current").nth(1).get_attribute("data-series") != current.get_attribute("data-series")

    # The report editor lists the prior and writes the comparison sentence in one click.
    page.click("form.write-report button")
    page.wait_for_selector("#priors[data-ready=true]")
    assert "Small left frontal infarct." in page.locator("#prior-list").inner_text()
    page.click(".insert-comparison")
    sentence = "Compared with CT of 2025-03-14 (CT HEAD)."
    assert page.locator("#findings").input_value().startswith(sentence)
    page.wait_for_function("() => document.getElementById('save-status').textContent.startsWith('Saved')")
    assert Report.objects.get(study=reading["current"]).draft["findings"].startswith(sentence)

    do_release_reading_task(reading["task"], acting_user=reader)
    gone = page.goto(f"{live_url}/viewer/studies/{reading['current'].pk}/compare/")
    assert gone.status == 404
    assert page.request.get(f"{live_url}/api/v1/viewer/studies/{reading['prior'].pk}/").status == 404
