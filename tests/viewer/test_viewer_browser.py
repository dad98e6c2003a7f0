"""The viewer in headless Chromium: scrolling, window/level, measuring, key images, MPR, phone size."""

from __future__ import annotations

import re

import pytest

from tests.conftest import browser_login
from viewer.models import KeyImage

pytestmark = pytest.mark.browser

# Helpers running in the page: map a point of the source image to the screen and read pixels there.
TO_CLIENT = """([plane, x, y]) => {
  const vp = window.pacsViewer.state.viewports.find((v) => v.el.dataset.plane === plane);
  const c = vp.toCanvas({x, y});
  const r = vp.canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  return {x: r.left + c.x / ratio, y: r.top + c.y / ratio};
}"""
GREY_AT = """([plane, x, y]) => {
  const vp = window.pacsViewer.state.viewports.find((v) => v.el.dataset.plane === plane);
  const c = vp.toCanvas({x, y});
  const d = vp.canvas.getContext('2d').getImageData(Math.round(c.x) - 2, Math.round(c.y) - 2, 5, 5).data;
  let sum = 0;
  for (let i = 0; i < d.length; i += 4) sum += d[i];
  return sum / (d.length / 4);
}"""


def linear(hu: float, center: float, width: float) -> float:
    """PS3.3 C.11.2.1.2.1 to 0..255."""
    if hu <= center - 0.5 - (width - 1) / 2:
        return 0.0
    if hu > center - 0.5 + (width - 1) / 2:
        return 255.0
    return ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255


def grey(page, x=32, y=48, plane="stack") -> float:
    return page.evaluate(GREY_AT, [plane, x, y])


def wait_for_grey(page, expected, tolerance=8, x=32, y=48):
    page.wait_for_function(
        f"([x, y, expected, tolerance]) => Math.abs(({GREY_AT})(['stack', x, y]) - expected) <= tolerance",
        arg=[x, y, expected, tolerance],
        timeout=10_000,
    )


def wait_for_dataset(page, selector, name, value):
    page.wait_for_function(
        "([selector, name, value]) => { const el = document.querySelector(selector);"
        " return el && el.dataset[name] === value; }",
        arg=[selector, name, str(value)],
    )


def drag(page, start, end, steps=8, touch=False):
    if touch:
        return touch_gesture(page, [start], [end], steps)
    page.mouse.move(start["x"], start["y"])
    page.mouse.down()
    page.mouse.move(end["x"], end["y"], steps=steps)
    page.mouse.up()


def touch_gesture(page, starts, ends, steps=8):
    """Real touch input (one finger per point) through the DevTools protocol."""
    cdp = page.context.new_cdp_session(page)

    def points(t):
        return [
            {"x": a["x"] + (b["x"] - a["x"]) * t, "y": a["y"] + (b["y"] - a["y"]) * t, "id": i}
            for i, (a, b) in enumerate(zip(starts, ends, strict=True))
        ]

    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": points(0)})
    for step in range(1, steps + 1):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": points(step / steps)})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def open_viewer(page, live_url, study):
    page.goto(f"{live_url}/viewer/studies/{study.pk}/")
    page.wait_for_selector("#viewer[data-ready=true]")
    # The progress indicator counts the series in and disappears when it is loaded.
    wait_for_dataset(page, "#stack-viewport", "loaded", 40)
    assert page.locator("#stack-viewport .progress").is_hidden()


def exercise_viewer(page, vol, study, tenants, touch=False):
    viewport = page.locator("#stack-viewport")
    shown = lambda: int(viewport.get_attribute("data-shown"))  # noqa: E731
    middle = shown()
    assert middle == 20
    assert "Phantom, Volume" in page.locator("[data-overlay=patient]").inner_text()

    box = viewport.bounding_box()
    centre = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    # Scroll: wheel (or a finger with the scroll tool), keys, and dragging with the scroll tool.
    if touch:
        page.locator("button[data-tool=scroll]").tap()
        drag(page, centre, {"x": centre["x"], "y": centre["y"] + 18}, touch=True)
    else:
        viewport.hover()
        for _ in range(3):  # three notches of the wheel
            page.mouse.wheel(0, 100)
    wait_for_dataset(page, "#stack-viewport", "shown", middle + 3)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert shown() == middle + 5
    page.keyboard.press("Home")
    assert shown() == 0
    assert "Im 1/40" in page.locator(".image-line").inner_text()
    page.keyboard.press("End")
    assert shown() == 39
    page.click("button[data-tool=scroll]")
    drag(page, centre, {"x": centre["x"], "y": centre["y"] - 60}, touch=touch)
    assert shown() == 29
    page.keyboard.press("ArrowUp")
    assert shown() == 28
    hu = float(vol.hu[28][48, 32])  # soft tissue below the sphere

    # Window/level: the soft-tissue pixel follows each window as the DICOM pipeline says.
    wait_for_grey(page, linear(hu, 40, 400))  # the file's own window
    page.select_option("#preset", label="Lung (-600/1500)")
    wait_for_grey(page, linear(hu, -600, 1500))
    assert grey(page) > 200
    page.select_option("#preset", label="Bone (400/1800)")
    wait_for_grey(page, linear(hu, 400, 1800))
    assert grey(page) < 100
    # Dragging to the right widens the window; the image is re-rendered on the server.
    page.click("button[data-tool=window]")
    before = viewport.get_attribute("data-window")
    drag(page, centre, {"x": centre["x"] + 120, "y": centre["y"] + 40}, touch=touch)
    center, width = (float(v) for v in viewport.get_attribute("data-window").split(","))
    assert before != f"{center},{width}" and width > 1800
    wait_for_grey(page, linear(hu, center, width))

    # Measure 40 pixels of 0.7 mm across the body: 28 mm.
    page.click("button[data-tool=measure]")
    start = page.evaluate(TO_CLIENT, ["stack", 12, 32])
    end = page.evaluate(TO_CLIENT, ["stack", 52, 32])
    drag(page, start, end, touch=touch)
    text = page.locator("#measurements .measurement").first.inner_text()
    millimetres = float(re.match(r"([\d.]+) mm", text).group(1))
    assert abs(millimetres - 28.0) < 0.8, text

    # Mark the image as a key image; it appears in the list and for the report editor.
    page.click("#key-image")
    page.wait_for_selector("#key-list li")
    assert "Series 2 · Image 29" in page.locator("#key-list li").first.inner_text()
    assert page.locator("#key-image").get_attribute("aria-pressed") == "true"
    key = KeyImage.objects.get()
    assert key.study == study and key.frame == 1
    assert key.instance.instance_number == 29  # the 29th image in reading order
    return key


def test_a_reader_scrolls_windows_measures_and_marks_a_key_image(ct_volume, tenants, live_url, browser_context):
    vol = ct_volume()
    study = vol.instances[0].series.study
    page = browser_login(browser_context(viewport={"width": 1280, "height": 800}), live_url, "radiologist@alpha")
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    open_viewer(page, live_url, study)
    exercise_viewer(page, vol, study, tenants)

    # Cine plays through the series and stops again.
    before = int(page.locator("#stack-viewport").get_attribute("data-shown"))
    page.fill("#cine-fps", "30")
    page.click("#cine")
    page.wait_for_function(
        "([start]) => Number(document.querySelector('#stack-viewport').dataset.shown) !== start", arg=[before]
    )
    page.click("#cine")
    assert page.locator("#cine").get_attribute("aria-pressed") == "false"

    # MPR: three reformats appear, the sagittal one head up in its physical aspect.
    page.click("#mpr-toggle")
    for plane in ("axial", "coronal", "sagittal"):
        page.wait_for_selector(f"#{plane}-viewport[data-shown]")
    sagittal = page.evaluate(
        "() => { const v = window.pacsViewer.state.viewports.find((x) => x.el.dataset.plane === 'sagittal');"
        " return [v.drawn.image.naturalWidth, v.drawn.image.naturalHeight]; }"
    )
    assert sagittal == [64, 143]
    page.select_option("#slab", label="MIP 10 mm")
    page.wait_for_function(
        "() => window.pacsViewer.state.viewports.every((v) => v.drawn && v.drawn.image.src.includes('mode=mip'))"
    )
    # Back in the stack, the key image list takes the reader to the marked image, where it is unmarked.
    page.click("#mpr-toggle")
    page.click("#key-list .key-open")
    wait_for_dataset(page, "#stack-viewport", "shown", 28)
    assert page.locator("#key-image").get_attribute("aria-pressed") == "true"
    page.click("#key-image")
    page.wait_for_selector("#key-empty", state="visible")
    assert not KeyImage.objects.exists()
    assert errors == []


WHEEL = """([deltaY, deltaMode]) => {
  const el = document.querySelector('#stack-viewport');
  el.dispatchEvent(new WheelEvent('wheel', {deltaY, deltaMode, bubbles: true, cancelable: true}));
  return Number(el.dataset.index);
}"""


def test_one_wheel_notch_moves_one_image(ct_volume, tenants, live_url, browser_context):
    study = ct_volume().instances[0].series.study
    page = browser_login(browser_context(viewport={"width": 1280, "height": 800}), live_url, "radiologist@alpha")
    open_viewer(page, live_url, study)
    start = int(page.locator("#stack-viewport").get_attribute("data-index"))
    # One notch as browsers report it: 100 px (Chromium), 300 px, 3 lines (Firefox): each one image.
    assert page.evaluate(WHEEL, [100, 0]) == start + 1
    assert page.evaluate(WHEEL, [300, 0]) == start + 2
    assert page.evaluate(WHEEL, [3, 1]) == start + 3
    assert page.evaluate(WHEEL, [-120, 0]) == start + 2
    # A real notch through the browser's own input.
    page.locator("#stack-viewport").hover()
    page.mouse.wheel(0, 100)
    wait_for_dataset(page, "#stack-viewport", "index", start + 3)
    # A touchpad's stream of small deltas adds up: 100 px in steps of 5 px is two images.
    for _ in range(19):
        page.evaluate(WHEEL, [5, 0])
    assert page.evaluate(WHEEL, [5, 0]) == start + 5


def test_the_viewer_works_at_phone_size(ct_volume, tenants, live_url, browser_context):
    vol = ct_volume()
    study = vol.instances[0].series.study
    context = browser_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = browser_login(context, live_url, "radiologist@alpha")
    open_viewer(page, live_url, study)
    # Series strip on top, the image across the whole width, nothing wider than the screen.
    series_box = page.locator(".series-panel").bounding_box()
    viewport_box = page.locator("#stack-viewport").bounding_box()
    assert series_box["y"] + series_box["height"] <= viewport_box["y"] + 1
    assert viewport_box["width"] >= 380
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # A finger scrolls the stack by default on a touch screen.
    assert page.locator("button[data-tool=scroll]").get_attribute("aria-pressed") == "true"
    exercise_viewer(page, vol, study, tenants, touch=True)
    # Two fingers apart zoom in.
    zoom_before = page.locator(".zoom-line").inner_text()
    box = page.locator("#stack-viewport").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    touch_gesture(
        page,
        [{"x": cx - 20, "y": cy}, {"x": cx + 20, "y": cy}],
        [{"x": cx - 80, "y": cy}, {"x": cx + 80, "y": cy}],
    )
    zoom_after = page.locator(".zoom-line").inner_text()
    assert float(zoom_after.split()[1].rstrip("×")) > 3 * float(zoom_before.split()[1].rstrip("×"))


def test_another_institution_cannot_open_the_viewer(ct_volume, tenants, live_url, browser_context):
    study = ct_volume().instances[0].series.study
    page = browser_login(browser_context(), live_url, "radiologist@charlie")
    response = page.goto(f"{live_url}/viewer/studies/{study.pk}/")
    assert response.status == 404
