"""A radiologist analyses a DCE-MRI series in the browser and puts the values into the report."""

from __future__ import annotations

import pytest

from archive.ingest import store_instance
from archive.models import Series
from pacs_cloud import celery_app
from reports import actions as report_actions
from tests.conftest import browser_login
from tests.reports.conftest import make_reading
from viewer.models import KeyImage
from viewer.render import load_dataset

from .test_dce_maps import KTRANS, PHASES, SIZE, write_series

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
    # The plot goes into the study as a key image.
    page.click("#dce-key-image")
    page.wait_for_selector("#dce-key-image-state:text-matches('^(Saved|Not saved)')", timeout=30_000)
    assert page.inner_text("#dce-key-image-state").startswith("Saved"), page.inner_text("#dce-key-image-state")
    assert KeyImage.objects.filter(study=reading.study, instance__series__description="DCE-MRI curves").exists()

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

    # The main viewer overlays the stored map on the dynamic series, with its colour bar and values.
    page.goto(f"{live_url}/viewer/studies/{reading.study.pk}/")
    dynamic = Series.objects.get(study=reading.study, description="DCE T1 FL3D")
    page.click(f".series-list button[data-series='{dynamic.pk}']")
    page.wait_for_selector("#map-controls:not([hidden])")
    ktrans = next(o for o in page.locator("#map-select option").all_inner_texts() if o.startswith("Ktrans"))
    page.select_option("#map-select", label=ktrans)
    # The stack opens in its middle: time point 10, slice 0, the slice the region was drawn on.
    page.wait_for_selector("#stack-viewport[data-map='Ktrans']", timeout=30_000)
    assert page.inner_text("#map-range").endswith("per minute")
    assert page.is_visible("#map-colorbar")
    spot = page.evaluate(
        "() => { const vp = window.pacsViewer.state.viewports[0]; const p = vp.toCanvas({x: 16.5, y: 16.5});"
        " const r = vp.canvas.getBoundingClientRect(); const ratio = window.devicePixelRatio || 1;"
        " const [red, green, blue] = vp.ctx.getImageData(Math.round(p.x), Math.round(p.y), 1, 1).data;"
        " return {x: r.left + p.x / ratio, y: r.top + p.y / ratio, grey: red === green && green === blue}; }"
    )
    assert not spot["grey"]  # coloured by the map, not the grey anatomy alone
    page.mouse.move(spot["x"], spot["y"])
    page.wait_for_selector("#map-value:text-matches('^Ktrans')")
    value = float(page.inner_text("#map-value").split()[1])
    assert value == pytest.approx(KTRANS[16, 16], abs=0.005 + 0.1 * KTRANS[16, 16])

    page.goto(f"{live_url}/reports/{report.pk}/edit/")
    page.wait_for_selector(".dce-insert")
    page.click(".dce-insert")
    findings = page.input_value("#findings")
    assert "DCE-MRI, Region" in findings and "curve type" in findings and "Ktrans" in findings
    page.wait_for_selector("#save-status:text-matches('^Saved')")
