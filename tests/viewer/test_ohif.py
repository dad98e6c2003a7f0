"""OHIF v3 served at /ohif/: the browser session reads our DICOMweb, and a study's first image is drawn."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image

from tests.conftest import browser_login, web_client

from .conftest import store_sample


def test_the_pinned_build_is_installed():
    assert (Path(settings.OHIF_DIST_DIR) / "index.html").is_file(), "run `make setup` (viewer/ohif/install.sh)"


def test_index_and_config_need_a_session_and_point_ohif_at_our_dicomweb(tenants):
    assert web_client().get("/ohif/").status_code == 302
    assert web_client().get("/ohif/app-config.js").status_code == 302
    client = web_client(tenants.a.clinician)
    page = client.get("/ohif/viewer?StudyInstanceUIDs=1.2.3")
    html = page.content.decode()
    assert 'window.PUBLIC_URL="/ohif/"' in html and 'src="/app' not in html
    # Its inline scripts are allowed by hash, not by 'unsafe-inline'.
    script_src = next(p for p in page["Content-Security-Policy"].split(";") if p.strip().startswith("script-src"))
    assert "'sha256-" in script_src and "unsafe-inline" not in script_src
    config = client.get("/ohif/app-config.js").content.decode()
    assert '"wadoRoot": "http://testserver/dicomweb"' in config and '"routerBasename": "/ohif"' in config
    assert "cloudfront" not in config


def test_the_build_files_are_served_and_paths_outside_it_are_not(tenants):
    client = web_client(tenants.a.clinician)
    bundle = next(Path(settings.OHIF_DIST_DIR).glob("app.bundle.*.js")).name
    answer = client.get(f"/ohif/{bundle}")
    assert answer.status_code == 200 and "immutable" in answer["Cache-Control"]
    # A path that leaves the build is the application's page, never a file.
    escaped = client.get("/ohif/..%2F..%2Fpackage.json")
    assert escaped.status_code == 200 and escaped["Content-Type"].startswith("text/html")


@pytest.mark.browser
def test_a_study_opens_in_ohif_from_the_viewer_and_its_first_image_is_drawn(
    tenants, live_url, browser_context, tmp_path
):
    instance = store_sample("CT_small.dcm", tenants.a.institution, tmp_path)
    study = instance.series.study
    page = browser_login(browser_context(viewport={"width": 1280, "height": 800}), live_url, "radiologist@alpha")
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:300]))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"[:300]))

    page.goto(f"{live_url}/viewer/studies/{study.pk}/")
    page.click("#open-in-ohif")
    page.wait_for_url("**/ohif/viewer?StudyInstanceUIDs=*")
    canvas = page.locator(".cornerstone-canvas, canvas.cornerstone-canvas").first
    try:
        canvas.wait_for(state="visible", timeout=60_000)
    except Exception:
        page.screenshot(path="/tmp/ohif-fail.png")
        raise AssertionError(f"no canvas; failed requests: {failures}; console: {console[-30:]}") from None

    def drawn() -> int:
        shot = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
        return sum(shot.histogram()[31:])  # pixels brighter than the background

    page.wait_for_function("() => true")  # let the first frame arrive
    for _ in range(60):
        if drawn() > 500:
            break
        page.wait_for_timeout(500)
    assert drawn() > 500, f"the first image was not drawn; failed requests: {failures}"
    assert not [f for f in failures if "/dicomweb/" in f], failures
