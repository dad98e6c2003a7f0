"""A radiologist analyses a DCE-MRI series in the browser and puts the values into the report."""

from __future__ import annotations

import pytest

from archive.ingest import store_instance
from pacs_cloud import celery_app
from reports import actions as report_actions
from tests.conftest import browser_login
from tests.reports.conftest import make_reading
from viewer.render import load_dataset

from .test_dce_maps import PHASES, SIZE, write_series

pytestmark = [pytest.mark.browser]


@pytest.fixture
def eager_tasks():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def test_draw_a_region_see_the_curve_map_it_and_report_it(tenants, live_url, browser_context, tmp_path, eager_tasks):
    reading = make_reading(tenants.a, patient_name="ZHANG^SAN")
    folder = tmp_path / "dce"
    folder.mkdir()
    write_series(folder, joining=load_dataset(reading.instance))
    for path in sorted(folder.iterdir()):
        store_instance(path, institution=tenants.a.institution)
    report, _ = report_actions.do_create_report(
        reading.study, acting_user=tenants.a.radiologist, template=reading.template
    )

    page = browser_login(browser_context(), live_url, tenants.a.radiologist.username)
    refused = []
    page.on("response", lambda r: r.status >= 400 and refused.append((r.status, r.url)))
    page.on("pageerror", lambda e: refused.append(("script", str(e))))
    page.goto(f"{live_url}/viewer/studies/{reading.study.pk}/")
    page.click("#open-dce")
    page.wait_for_url("**/dce/")
    # The overlay canvas takes the image's own size once the frame has loaded.
    for _ in range(100):
        if page.eval_on_selector("#dce-overlay", "c => c.width") == SIZE:
            break
        page.wait_for_timeout(100)
    assert page.eval_on_selector("#dce-overlay", "c => c.width") == SIZE
    assert page.input_value("#dce-phase") == str(PHASES - 1)

    # Draw a square region (the canvas shows the 32×32 image at 384 px: 12 px per pixel).
    box = page.locator("#dce-overlay").bounding_box()
    for x, y in ((8, 8), (24, 8), (24, 24), (8, 24)):
        page.mouse.click(box["x"] + x * 12, box["y"] + y * 12)
    page.click("#dce-close")
    page.click("#dce-analyse")
    # The first analysis in a process loads SciPy and dcmri: seconds on a loaded machine.
    page.wait_for_selector("#dce-curve-type:text-matches('^(Curve type|Not analysed)')", timeout=90_000)
    assert page.inner_text("#dce-curve-type").startswith("Curve type "), page.inner_text("#dce-curve-type")
    assert page.locator("#dce-curve polyline").count() == 2  # the region's curve and the AIF
    assert "Ktrans" in page.inner_text("#dce-values")

    page.click("#dce-start")
    page.wait_for_selector("#dce-job-state:text-matches('Maps (done|failed)|Not started')", timeout=90_000)
    assert page.inner_text("#dce-job-state").startswith("Maps done"), page.inner_text("#dce-job-state")
    assert page.eval_on_selector("#dce-progress", "p => p.value") == 1
    page.wait_for_selector("#dce-maps:not([hidden])")
    try:
        page.wait_for_selector("#dce-colorbar-range:text-matches('1/min')", timeout=30_000)
    finally:
        assert refused == [], refused
    box = page.locator("#dce-overlay").bounding_box()  # clicking the buttons below may have scrolled the page
    page.mouse.move(box["x"] + 16 * 12 + 6, box["y"] + 16 * 12 + 6)
    assert page.inner_text("#dce-value").startswith("Ktrans ")
    painted = page.evaluate(
        "() => { const c = document.getElementById('dce-overlay');"
        " return c.getContext('2d').getImageData(16, 16, 1, 1).data[3]; }"
    )
    assert painted > 0  # the map is drawn over the anatomy inside the region

    page.goto(f"{live_url}/reports/{report.pk}/edit/")
    page.wait_for_selector(".dce-insert")
    page.click(".dce-insert")
    findings = page.input_value("#findings")
    assert "DCE-MRI, Region" in findings and "curve type" in findings and "Ktrans" in findings
    page.wait_for_selector("#save-status:text-matches('^Saved')")
