"""The 3D viewer in headless Chromium, on a desktop and on a phone-sized touch screen."""

from __future__ import annotations

import numpy as np
import pytest

from archive.models import Series
from tests.conftest import browser_login
from viewer.models import KeyImage
from viewer.volume import sessions

from . import volume_phantom as phantom
from .conftest import store
from .test_viewer_browser import touch_gesture

pytestmark = pytest.mark.browser


@pytest.fixture
def archived_phantom(tenants, tmp_path):
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in phantom.datasets()]
    return Series.objects.get(pk=instances[0].series_id)


def open_3d(page, live_url, series, *, from_2d=False):
    # Every picture is rendered on the server, sharing the test process's cores with the browser.
    page.set_default_timeout(30_000)
    if from_2d:  # the radiologist reading the CT opens 3D from the viewer's toolbar
        page.goto(f"{live_url}/viewer/studies/{series.study_id}/")
        page.click("#open-3d")
    else:
        page.goto(f"{live_url}/viewer/series/{series.pk}/3d/")
    page.wait_for_selector("#volume[data-session=open]")
    page.wait_for_function(
        "() => window.pacsVolume.state.frames > 0 && window.pacsVolume.state.lastHeader.quality === 'full'"
    )
    return page.locator("#v3d-canvas").bounding_box()


def the_session():
    [session] = sessions.open_sessions()
    return session


def frames(page) -> int:
    return page.evaluate("window.pacsVolume.state.frames")


def wait_for_full_frame_after(page, count):
    page.wait_for_function(
        "(n) => window.pacsVolume.state.frames > n && window.pacsVolume.state.lastHeader.quality === 'full'",
        arg=count,
    )


def bright_pixels(page, level=120) -> int:
    """How many pixels of the canvas have a channel brighter than ``level`` (counted in the page)."""
    return page.evaluate(
        """(level) => { const c = document.getElementById('v3d-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (Math.max(d[i], d[i + 1], d[i + 2]) > level) n++;
        return n; }""",
        level,
    )


def test_a_radiologist_rotates_clips_draws_a_curved_mpr_measures_and_saves_snapshots(
    archived_phantom, tenants, live_url, browser_context
):
    page = browser_login(browser_context(viewport={"width": 1100, "height": 760}), live_url, "radiologist@alpha")
    box = open_3d(page, live_url, archived_phantom, from_2d=True)
    centre = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    direction = the_session().camera.direction.copy()
    before = frames(page)
    page.mouse.move(centre["x"], centre["y"])
    page.mouse.down()
    for step in range(1, 13):  # a hand's pace: frames arrive while the button is down
        page.mouse.move(centre["x"] + step * 10, centre["y"])
        page.wait_for_timeout(40)
    page.wait_for_function("() => window.pacsVolume.state.interactiveFrames > 0")
    page.mouse.up()
    wait_for_full_frame_after(page, before)
    turned = the_session().camera.direction
    assert np.degrees(np.arccos(np.clip(np.dot(direction, turned), -1, 1))) > 30
    assert page.evaluate("window.pacsVolume.state.interactiveFrames") >= 1
    # Presets switch on the server.
    for name in ("mip", "cta", "bone"):
        count = frames(page)
        page.select_option("#v3d-preset", name)
        wait_for_full_frame_after(page, count)
        assert the_session().transfer.name == name
    # Clipping away the columns right of 40 % removes the spine (45–55 %) from the picture.
    count = frames(page)
    page.select_option("#v3d-view", "left")
    wait_for_full_frame_after(page, count)
    count = frames(page)
    page.check("#v3d-table")
    wait_for_full_frame_after(page, count)
    bright = bright_pixels(page)
    assert bright > 1000
    count = frames(page)
    page.click(".v3d-clip summary")
    page.locator("#v3d-clip-x1").fill("40")
    page.locator("#v3d-clip-x1").dispatch_event("change")
    wait_for_full_frame_after(page, count)
    assert the_session().clipping.box[1] == pytest.approx(0.4)
    assert the_session().clipping.table_cut
    assert bright_pixels(page) < bright / 5
    page.click(".v3d-clip summary")  # fold the clipping controls away again
    draw_a_curved_mpr_measure_and_save_snapshots(page, archived_phantom, tenants, live_url)


TO_CLIENT = """([plane, point]) => {
  const view = window.pacsVolume.mpr.views[plane];
  view.img.scrollIntoView({block: "nearest"});
  const rel = point.map((v, k) => v - view.centre[k]);
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const column = view.width / 2 + dot(rel, view.right) / view.pixel;
  const row = view.height / 2 + dot(rel, view.down) / view.pixel;
  const r = view.img.getBoundingClientRect();
  return {x: r.left + (column / view.width) * r.width, y: r.top + (row / view.height) * r.height};
}"""
# Mean grey of the middle tenth of an image's columns, and of two bands 6 mm to either side.
STRAIGHT_PROFILE = """() => {
  const img = document.getElementById('v3d-straight');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const band = (x0, x1) => { let s = 0, n = 0;
    for (let y = 4; y < c.height - 4; y++) for (let x = x0; x < x1; x++) { s += d[(y * c.width + x) * 4]; n++; }
    return s / n; };
  const m = c.width / 2;
  return {middle: band(m - 2, m + 2), side: (band(m - 14, m - 10) + band(m + 10, m + 14)) / 2, height: c.height};
}"""


def mm(k, r, c):
    gap, row, col = phantom.SPACING
    return [c * col, r * row, k * gap]


def click_at(page, plane, point):
    spot = page.evaluate(TO_CLIENT, [plane, point])
    page.mouse.click(spot["x"], spot["y"])


def wait_for_views_at(page, loads):
    page.wait_for_function("(n) => window.pacsVolume.mpr.loads >= n", arg=loads)
    page.wait_for_function(
        """() => ['axial', 'coronal', 'sagittal'].every((p) => { const v = window.pacsVolume.mpr.views[p];
        return v && v.centre.every((x, k) => Math.abs(x - window.pacsVolume.mpr.centre[k]) < 1e-6) && v.img.complete; })"""
    )


def draw_a_curved_mpr_measure_and_save_snapshots(page, archived_phantom, tenants, live_url):
    wait_for_views_at(page, 3)
    # The 3D cursor: a click on the vessel in the axial view centres every view there; the coronal
    # view then runs along the vessel (it lies in one coronal plane, row 50).
    k = 31.5
    click_at(page, "axial", mm(k, phantom.VESSEL_ROW, phantom.vessel_column(k)))
    wait_for_views_at(page, 6)
    centre = page.evaluate("window.pacsVolume.mpr.centre")
    assert centre[1] == pytest.approx(phantom.VESSEL_ROW * phantom.SPACING[1], abs=1.5)  # a reformat pixel
    # Curved MPR: click along the vessel in the coronal view, straighten, take a cross-section.
    page.click(".v3d-tools button[data-tool=path]")
    for point in phantom.vessel_path():
        click_at(page, "coronal", mm(point[0], phantom.VESSEL_ROW, point[2]))
    page.click("#v3d-straighten")
    page.wait_for_function("() => document.getElementById('v3d-curved').dataset.length")
    page.wait_for_function("() => document.getElementById('v3d-straight').complete")
    profile = page.evaluate(STRAIGHT_PROFILE)
    # Contrast (350 HU) down the middle, soft tissue (40 HU) beside it, in the 40/400 window.
    assert profile["middle"] > 200 and profile["side"] < 160
    length = float(page.locator("#v3d-curved").get_attribute("data-length"))
    assert length == pytest.approx(profile["height"] * 0.5, abs=1)
    page.locator("#v3d-straight").scroll_into_view_if_needed()
    straight = page.locator("#v3d-straight").bounding_box()
    page.mouse.click(straight["x"] + straight["width"] / 2, straight["y"] + straight["height"] / 2)
    page.wait_for_function("() => document.getElementById('v3d-curved').dataset.section")
    # A distance in the sagittal view along the spine: 30 slices of 2 mm apart.
    page.click(".v3d-tools button[data-tool=cursor]")
    click_at(page, "axial", mm(31.5, 88, 64))
    wait_for_views_at(page, 9)
    page.click(".v3d-tools button[data-tool=distance]")
    click_at(page, "sagittal", mm(16, 88, 64))
    click_at(page, "sagittal", mm(46, 88, 64))
    page.wait_for_selector("#v3d-measurements li")
    text = page.locator("#v3d-measurements li").last.inner_text()
    assert text.startswith("Distance") and float(text.split()[1]) == pytest.approx(60.0, abs=1.5)
    # Snapshots of the 3D view and of the reformat become key images of the study.
    page.click("#v3d-snapshot")
    page.wait_for_function("() => window.pacsVolume.state.snapshots.length === 1", timeout=30_000)
    page.click("#v3d-mpr-snapshot")
    page.wait_for_function("() => window.pacsVolume.mpr.snapshots.length === 1")
    saved = [page.evaluate("window.pacsVolume.state.snapshots[0]"), page.evaluate("window.pacsVolume.mpr.snapshots[0]")]
    marked = KeyImage.objects.filter(study=archived_phantom.study, user=tenants.a.radiologist)
    assert {k.instance.sop_instance_uid for k in marked} == {s["sop_instance_uid"] for s in saved}
    assert {k.instance.series.modality for k in marked} <= {"OT", "CT"}
    response = page.request.get(
        f"{live_url}/dicomweb/studies/{saved[0]['study_instance_uid']}/series/{saved[0]['series_instance_uid']}"
        f"/instances/{saved[0]['sop_instance_uid']}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status == 200 and b"1.2.840.10008.5.1.4.1.1.7" in response.body()


def test_on_a_phone_one_finger_rotates_and_two_fingers_zoom(archived_phantom, live_url, browser_context):
    context = browser_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = browser_login(context, live_url, "radiologist@alpha")
    box = open_3d(page, live_url, archived_phantom)
    assert box["width"] >= 370 and page.evaluate("document.documentElement.scrollWidth") <= 390
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    direction = the_session().camera.direction.copy()
    count = frames(page)
    touch_gesture(page, [{"x": cx - 60, "y": cy}], [{"x": cx + 60, "y": cy}], steps=10)
    wait_for_full_frame_after(page, count)
    assert np.dot(direction, the_session().camera.direction) < 0.9
    height = the_session().camera.height_mm
    count = frames(page)
    touch_gesture(
        page, [{"x": cx - 20, "y": cy}, {"x": cx + 20, "y": cy}], [{"x": cx - 80, "y": cy}, {"x": cx + 80, "y": cy}]
    )
    wait_for_full_frame_after(page, count)
    assert the_session().camera.height_mm < height / 2.5
    # Full frames at the phone's device pixels (twice the CSS pixels).
    assert page.evaluate("document.getElementById('v3d-canvas').width") >= 2 * 370
    page.wait_for_function(
        """() => { const h = window.pacsVolume.state.lastHeader;
        return h.quality === 'full' && h.width === document.getElementById('v3d-canvas').width; }"""
    )


def test_the_transfer_function_editor_reshapes_the_picture_and_follows_presets(
    archived_phantom, tenants, live_url, browser_context
):
    page = browser_login(browser_context(viewport={"width": 1100, "height": 760}), live_url, "radiologist@alpha")
    open_3d(page, live_url, archived_phantom)
    page.click("#v3d-tf-editor summary")
    handles = page.locator("#v3d-tf circle")
    assert handles.count() == len(the_session().transfer.opacity_points())
    assert bright_pixels(page) > 500
    # Every opacity point dragged to the bottom: nothing left to see.
    editor = page.locator("#v3d-tf").bounding_box()
    for index in range(handles.count()):
        dot = handles.nth(index).bounding_box()
        count = frames(page)
        page.mouse.move(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
        page.mouse.down()
        page.mouse.move(dot["x"] + dot["width"] / 2, editor["y"] + editor["height"] + 20, steps=4)
        page.mouse.up()
        wait_for_full_frame_after(page, count)
    transfer = the_session().transfer
    assert transfer.name == "custom" and all(a == 0 for _, a in transfer.opacity_points())
    assert bright_pixels(page, level=20) == 0
    # A point's colour, chosen on the page, is the server's colour at that HU.
    handles.nth(0).click()
    hu = transfer.opacity_points()[0][0]
    count = frames(page)
    page.locator("#v3d-tf-colour").fill("#ff0000")
    wait_for_full_frame_after(page, count)
    assert (hu, 1.0, 0.0, 0.0) in the_session().transfer.colour_points()
    # A preset replaces the function, and the editor shows the preset's points.
    count = frames(page)
    page.select_option("#v3d-preset", "cta")
    wait_for_full_frame_after(page, count)
    expected = [[round(h), round(a, 3)] for h, a in the_session().transfer.opacity_points()]
    page.wait_for_function("(n) => document.querySelectorAll('#v3d-tf circle').length === n", arg=len(expected))
    shown = page.evaluate("window.pacsVolume.transferEditor.transfer.opacity")
    assert [[round(h), round(a, 3)] for h, a in shown] == expected
