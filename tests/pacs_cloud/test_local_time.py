"""Every time a user reads is in the institution's time zone, and says which."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import time_machine
from django.utils import timezone

from pacs_cloud.lib.local_time import format_local
from tests.conftest import web_client
from tests.samples import store_sample_study

APP_JS = Path(__file__).resolve().parents[2] / "pacs_cloud" / "static" / "pacs_cloud" / "app.js"
RECEIVED = dt.datetime(2026, 12, 7, 6, 3, tzinfo=dt.UTC)  # 14:03 in Beijing


@pytest.mark.parametrize(
    ("zone", "shown"),
    [
        ("Asia/Shanghai", "2026-12-07 14:03 UTC+8"),
        ("UTC", "2026-12-07 06:03 UTC"),
        ("", "2026-12-07 06:03 UTC"),
        ("Not/AZone", "2026-12-07 06:03 UTC"),
        ("Asia/Kolkata", "2026-12-07 11:33 UTC+5:30"),
        ("America/St_Johns", "2026-12-07 02:33 UTC-3:30"),
    ],
)
def test_a_time_is_shown_in_the_zone_with_its_offset(zone, shown):
    assert format_local(RECEIVED, zone) == shown


def test_a_study_reads_the_same_local_time_on_the_home_panel_and_the_reconciliation_list(
    tenants, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    with time_machine.travel(RECEIVED, tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            store_sample_study(tenants.a.institution, patient_name="LATE^LUCY", patient_id="T-1", accession="NOORDER1")
        client = web_client(tenants.a.technologist)
        home = client.get("/").content.decode()
        queue = client.get("/worklist/reconciliation/").content.decode()
    for page in (home, queue):
        assert "LATE, LUCY" in page
        assert "2026-12-07 14:03 UTC+8" in page
        assert "06:03" not in page


def test_pages_name_the_zone_for_scripts_and_requests_end_in_utc(tenants):
    page = web_client(tenants.a.technologist).get("/").content.decode()
    assert 'data-time-zone="Asia/Shanghai"' in page
    # The page activated Beijing time while it rendered; nothing after it inherits that.
    assert timezone.get_current_timezone_name() == "UTC"


def test_scripts_format_times_as_the_pages_do(browser_context):
    page = browser_context().new_page()
    page.set_content(f'<body data-time-zone="Asia/Shanghai"><script>{APP_JS.read_text()}</script></body>')
    assert page.evaluate("pacsTime('2026-12-07T06:03:00Z')") == "2026-12-07 14:03 UTC+8"
    assert page.evaluate("pacsTime('2026-12-07T06:03:09Z', { seconds: true })") == "2026-12-07 14:03:09 UTC+8"
    page.set_content(f'<body data-time-zone="UTC"><script>{APP_JS.read_text()}</script></body>')
    assert page.evaluate("pacsTime('2026-12-07T06:03:00Z')") == "2026-12-07 06:03 UTC"


def test_the_exam_worklist_says_which_zone_its_times_are_in(tenants):
    page = web_client(tenants.a.technologist).get("/worklist/").content.decode()
    assert "Time (UTC+8)" in page
