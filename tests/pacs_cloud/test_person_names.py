"""One way to show a person's name: the characters first, the Latin form beside them, never the raw PN."""

from __future__ import annotations

import re

import pytest

from pacs_cloud.lib.person_names import display_name, search_words
from tests.conftest import api_client, web_client
from tests.referrals.conftest import draft
from tests.reports.conftest import make_reading, write_and_sign

PN = "ZHANG^SAN=张^三"
SHOWN = "张三 (ZHANG, SAN)"


@pytest.mark.parametrize(
    ("pn", "shown"),
    [
        (PN, SHOWN),
        ("ZHANG^WEI=张^伟", "张伟 (ZHANG, WEI)"),
        ("ZHANG^SAN=张^三=", SHOWN),  # an empty phonetic group
        ("Wang^XiaoDong=王^小东=おう^しょうとう", "王小东 (Wang, XiaoDong)"),
        ("=张^三", "张三"),
        ("SMITH^JOHN^Q^DR^JR", "SMITH, JOHN Q DR JR"),
        ("DOE", "DOE"),
        ("", ""),
        (None, ""),
    ],
)
def test_a_name_is_shown_characters_first(pn, shown):
    assert display_name(pn) == shown


@pytest.mark.parametrize(
    ("typed", "words"),
    [
        ("张三", ["张三"]),
        ("ZHANG, SAN", ["ZHANG", "SAN"]),
        (SHOWN, ["张三", "ZHANG", "SAN"]),
        ("张三（ZHANG，SAN）", ["张三", "ZHANG", "SAN"]),  # full-width punctuation, as a Chinese keyboard types it
        (PN, ["ZHANG", "SAN", "张", "三"]),
        ("zhang*", ["zhang"]),
    ],
)
def test_a_typed_name_is_read_in_any_form_the_app_shows(typed, words):
    assert search_words(typed) == words


def assert_shown(page: str) -> None:
    assert SHOWN in page
    assert not re.search(r"ZHANG\^|张\^|=张", page), "a raw DICOM person name is on the page"


@pytest.fixture
def chinese_reading(tenants, settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.REPORTS_HL7_OUTBOUND = ""
    return make_reading(tenants.a, patient_name=PN)


def test_the_exam_worklist_and_the_order_show_the_display_name(chinese_reading):
    order = chinese_reading.order
    client = web_client(chinese_reading.tenant.technologist)
    assert_shown(client.get(f"/worklist/?date={order.scheduled_date:%Y-%m-%d}").content.decode())
    assert_shown(client.get(f"/worklist/orders/{order.pk}/").content.decode())


def test_the_reading_list_and_the_task_show_the_display_name(chinese_reading):
    client = web_client(chinese_reading.tenant.radiologist)
    assert_shown(client.get("/workflow/?view=claimed").content.decode())
    assert_shown(client.get("/workflow/rows/?view=claimed").content.decode())
    assert_shown(client.get(f"/workflow/tasks/{chinese_reading.task.pk}/").content.decode())
    body = api_client(chinese_reading.tenant.radiologist).get("/api/v1/reading-tasks/?view=claimed").json()
    rows = body["results"] if isinstance(body, dict) else body
    assert [row["patient"]["display_name"] for row in rows if row["patient"]] == [SHOWN]


def test_the_viewer_overlay_and_its_metadata_show_the_display_name(chinese_reading):
    study = chinese_reading.study
    user = chinese_reading.tenant.radiologist
    assert_shown(web_client(user).get(f"/viewer/studies/{study.pk}/").content.decode())
    patient = api_client(user).get(f"/api/v1/viewer/studies/{study.pk}/").json()["patient"]
    assert patient["display_name"] == SHOWN and patient["name"] == PN


def test_the_report_its_lookup_and_the_home_panels_show_the_display_name(chinese_reading):
    report, _ = write_and_sign(chinese_reading, key_image=False)
    clinician = chinese_reading.tenant.clinician
    client = web_client(clinician)
    assert_shown(client.get(f"/reports/{report.pk}/").content.decode())
    assert_shown(client.get("/reports/?patient_name=ZHANG").content.decode())
    assert_shown(client.get("/").content.decode())
    rows = api_client(clinician).get("/api/v1/reports/?patient_name=ZHANG").json()["results"]
    assert [r["patient_display_name"] for r in rows] == [SHOWN]


def test_the_referral_pages_show_the_display_name(tenants, chinese_reading):
    referral = draft(tenants, chinese_reading.study)
    client = web_client(tenants.a.referral_coordinator)
    assert_shown(client.get("/referrals/?box=outbox").content.decode())
    assert_shown(client.get(f"/referrals/{referral.pk}/").content.decode())
    assert_shown(client.get("/referrals/new/").content.decode())
