"""The 3D viewer in headless Chromium, on a desktop and on a phone-sized touch screen."""

from __future__ import annotations

import numpy as np
import pytest

from archive.models import Series
from tests.conftest import browser_login
from viewer.volume import sessions

from . import volume_phantom as phantom
from .conftest import store
from .test_viewer_browser import touch_gesture

pytestmark = pytest.mark.browser


@pytest.fixture
def archived_phantom(tenants, tmp_path):
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in phantom.datasets()]
    return Series.objects.get(pk=instances[0].series_id)


def open_3d(page, live_url, series):
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


def test_a_radiologist_rotates_switches_presets_and_clips_with_the_mouse(archived_phantom, live_url, browser_context):
    page = browser_login(browser_context(viewport={"width": 900, "height": 640}), live_url, "radiologist@alpha")
    box = open_3d(page, live_url, archived_phantom)
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
    header = page.evaluate("window.pacsVolume.state.lastHeader")
    # Frames at the phone's device pixels (twice the CSS pixels).
    assert header["width"] == page.evaluate("document.getElementById('v3d-canvas').width") >= 2 * 370
