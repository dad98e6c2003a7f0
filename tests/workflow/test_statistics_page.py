"""The statistics page in a real browser: charts drawn, a filter and the date range changed, a CSV downloaded."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from tests.conftest import browser_login
from tests.workflow.conftest import make_study
from workflow.actions import do_claim_reading_task, do_finalize_task, do_start_reading_process

pytestmark = [pytest.mark.browser]


def test_an_administrator_reads_filters_and_downloads_the_statistics(live_url, tenants, browser_context, tmp_path):
    a = tenants.a
    a.radiologist.display_name = "王医生"
    a.radiologist.save(update_fields=["display_name"])
    for modality in ("CT", "CT", "MR"):
        task = do_start_reading_process(make_study(a.institution, modality=modality, patient_name="张^三")).tasks.get()
        do_claim_reading_task(task, acting_user=a.radiologist)
        do_finalize_task(task, acting_user=a.radiologist)
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()

    page = browser_login(browser_context(), live_url, a.institution_admin.username)
    page.get_by_role("link", name="Statistics", exact=True).click()
    expect(page.locator("h1")).to_contain_text(a.institution.name)
    modality_bars = page.locator("#chart-volume-by-modality svg rect.bar")
    expect(modality_bars).to_have_count(2)
    expect(page.locator("#chart-workload svg")).to_contain_text("王医生")
    expect(page.locator("#chart-volume-by-day svg circle.point")).to_have_count(30)  # the last 30 days

    # A filter: only MR.
    page.select_option("#filter-modality", "MR")
    page.click("#statistics-filters button[type=submit]")
    expect(modality_bars).to_have_count(1)
    expect(page.locator("#chart-volume-by-modality svg")).to_contain_text("MR")

    # The date range: one week ending today.
    page.fill("#filter-from", (today - timedelta(days=6)).isoformat())
    page.fill("#filter-to", today.isoformat())
    page.click("#statistics-filters button[type=submit]")
    expect(page.locator("#chart-volume-by-day svg circle.point")).to_have_count(7)
    assert "modality=MR" in page.url

    # The workload chart's CSV, as Excel wants it.
    page.select_option("#filter-modality", "")
    page.click("#statistics-filters button[type=submit]")
    with page.expect_download() as download:
        page.click("#chart-workload a.csv")
    saved = tmp_path / "workload.csv"
    download.value.save_as(saved)
    data = saved.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert "王医生,3,3.5" in data.decode("utf-8-sig")  # CT 1.0 + CT 1.0 + MR 1.5
