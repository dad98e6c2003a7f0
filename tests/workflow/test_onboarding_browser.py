"""In a real browser, a new hospital from the platform administrator's first click to its first study.

The platform administrator creates 湖畔县人民医院; its first administrator
opens the one-time link, sets a password and walks the checklist: a modality
(echoed from the server: dcmtk's storescp stands in for the CT), a GB18030
catalogue, a technologist invited, a routing template, an edge enrolled and
started as a real process with the command the page shows (only its ports and
data folder adapted for the test), then dcmtk's storescu sends a CT to that
edge. The checklist turns green and the technologist finds the study on their
home page. The wall time is the README's onboarding figure (target: under 10 minutes).
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import time

import pytest

from archive.models import Study
from tests.archive.conftest import dcmtk, make_ct, storage_dir, write  # noqa: F401
from tests.conftest import browser_login, free_port
from tests.edge.conftest import EdgeProcess

pytestmark = [pytest.mark.browser, pytest.mark.dcmtk]

PASSPHRASE = "a new hospital passphrase"
CATALOGUE = "code,name,modality,body_part,duration_minutes\nCT001,胸部CT平扫,CT,CHEST,15\nCT002,头颅CT平扫,CT,HEAD,10\n"


def accept(page, link: str, username: str) -> None:
    page.goto(link)
    page.fill("#id_username", username)
    page.fill("#id_password", PASSPHRASE)
    page.fill("#id_password_again", PASSPHRASE)
    page.click("#accept-invitation button[type=submit]")
    page.wait_for_selector(".messages li:has-text('Welcome to 湖畔县人民医院')")


@pytest.fixture
def modality(tmp_path):
    """dcmtk's storescp as the hospital's CT: it answers the echo the server sends."""
    port = free_port()
    folder = tmp_path / "modality"
    folder.mkdir()
    process = subprocess.Popen(["storescp", "-od", str(folder), str(port)], stderr=subprocess.DEVNULL)
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_new_hospital_from_the_first_click_to_its_first_study(
    platform_admin,
    live_url,
    browser_context,
    storage_dir,  # noqa: F811
    modality,
    tmp_path,
    settings,
):
    # New passwords (two invitations) hashed quickly; Argon2 still checks the platform administrator's.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
    ]
    started = time.monotonic()
    page = browser_login(browser_context(), live_url, platform_admin.username)
    page.click("#new-institution")
    page.fill("#id_name", "湖畔县人民医院")
    page.fill("#id_slug", "lakeside")
    page.select_option("#id_character_set", "GB18030")
    page.fill("#id_accession_prefix", "LK")
    page.fill("#id_admin_name", "王芳")
    page.click("#create-institution button[type=submit]")
    link = page.input_value("#invitation-link")

    admin = browser_context().new_page()
    accept(admin, link, "wang@lakeside")
    admin.click("#open-onboarding")
    admin.wait_for_url("**/onboarding/")
    assert "Set up 湖畔县人民医院" in admin.inner_text("h1")
    assert admin.get_attribute("html", "lang") == "zh-Hans"  # the institution's first language

    # 1. A modality, echoed from the server.
    admin.fill("#add-node input[name=ae_title]", "LAKE_CT")
    admin.fill("#add-node input[name=host]", "127.0.0.1")
    admin.fill("#add-node input[name=port]", str(modality))
    admin.click("#add-node button[type=submit]")
    admin.click("#nodes tr[data-ae=LAKE_CT] button.echo")
    admin.wait_for_selector(".messages li.success:has-text('LAKE_CT answered the echo')")
    # 2. The catalogue, as a spreadsheet saves Chinese text.
    csv = tmp_path / "catalogue.csv"
    csv.write_bytes(CATALOGUE.encode("gb18030"))
    admin.set_input_files("#import-procedures input[type=file]", str(csv))
    admin.click("#import-procedures button[type=submit]")
    admin.wait_for_selector(".messages li:has-text('Catalogue imported (GB18030): 2 new')")
    # 3. A technologist, invited.
    admin.fill("#invite input[name=display_name]", "李技师")
    admin.click("#invite button[type=submit]")
    technologist = browser_context().new_page()
    accept(technologist, admin.input_value("#invitation-link"), "li@lakeside")
    # 4. Routing from a template.
    admin.check("#routing-template input[value=own]")
    admin.click("#routing-template button[type=submit]")
    admin.wait_for_selector(".messages li:has-text('Routing policy version 1')")
    # 5. The edge, started with the command shown.
    admin.fill("#enrol-edge input[name=name]", "放射科服务器")
    admin.click("#enrol-edge button[type=submit]")
    words = shlex.split(admin.inner_text("#edge-command"))
    env = dict(word.split("=", 1) for word in words[:3])
    assert list(env) == ["PACS_ROLE", "CLOUD_URL", "EDGE_TOKEN"] and words[3:] == [
        "python",
        "manage.py",
        "edge_gateway",
    ]
    assert env["CLOUD_URL"] == live_url
    assert admin.locator("#edge-light.ok").count() == 0
    folder = tmp_path / "edge"
    folder.mkdir()
    edge = EdgeProcess(folder, env["CLOUD_URL"], env["EDGE_TOKEN"], PACS_ROLE=env["PACS_ROLE"]).start()
    try:
        admin.wait_for_selector("#edge-light.ok:has-text('edge connected')", timeout=30_000)
        assert admin.locator("#check-edge.done").count() == 1
        # 6. A test image: C-STORE to the new edge, which forwards it to the cloud.
        image = tmp_path / "ct.dcm"
        write(make_ct(patient_name="张^三", charset="ISO_IR 192", patient_id="LK0001", accession="LK1"), image)
        deadline = time.monotonic() + 20
        while True:  # the edge learns LAKE_CT at its first configuration sync
            sent = dcmtk("storescu", "-aet", "LAKE_CT", "-aec", "PACSEDGE", "127.0.0.1", str(edge.port), str(image))
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert sent.returncode == 0, sent.stderr + edge.output()[-2000:]
        admin.wait_for_selector("#check-test_image.done", timeout=60_000)
        admin.wait_for_selector("#first-study:has-text('First study received')")
    finally:
        edge.kill(signal.SIGTERM)
    technologist.goto(f"{live_url}/")
    received = technologist.inner_text("table.studies")
    assert "张" in received and "LK1" in received
    elapsed = time.monotonic() - started
    study = Study.objects.get(accession_number="LK1")
    assert study.institution.slug == "lakeside"
    print(f"\nonboarding wall time: {elapsed:.1f} s")
    assert elapsed < 600
    # Every checklist step is green; the home page no longer asks to set up.
    admin.goto(f"{live_url}/onboarding/")
    assert admin.locator("#checklist li.done").count() == 6
