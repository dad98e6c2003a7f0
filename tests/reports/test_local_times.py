"""Report times read in the institution's zone (the demo's hospitals are in UTC+8), with the zone."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from tests.conftest import PASSWORD, api_client, web_client

from .conftest import write_and_sign

BEIJING = ZoneInfo("Asia/Shanghai")


def test_the_report_page_shows_the_signature_time_in_the_hospitals_zone(reading):
    report, version = write_and_sign(reading, key_image=False)
    page = web_client(reading.tenant.clinician).get(f"/reports/{report.pk}/").content.decode()
    assert f"on {version.signed_at.astimezone(BEIJING):%Y-%m-%d %H:%M:%S} UTC+8" in page


def test_an_addendum_is_stamped_with_the_hospitals_local_time(reading):
    report, _ = write_and_sign(reading, key_image=False)
    client = api_client(reading.tenant.radiologist)
    opened = client.post(f"/api/v1/reports/{report.pk}/addendum/", {"kind": "addendum"}, format="json").json()
    draft = {**opened["draft"], "addendum": "The nodule is stable."}
    client.put(
        f"/api/v1/reports/{report.pk}/draft/",
        {"content": draft, "base_revision": opened["draft_revision"]},
        format="json",
    )
    signed = client.post(f"/api/v1/reports/{report.pk}/sign/", {"password": PASSWORD}, format="json")
    assert signed.status_code == 201, signed.content
    version = report.versions.get(number=2)
    local = version.signed_at.astimezone(BEIJING)
    stamp = re.match(r"Addendum (\d{4}-\d\d-\d\d \d\d:\d\d) UTC\+8, ", version.content["addendum"])
    assert stamp and stamp.group(1) == f"{local:%Y-%m-%d %H:%M}"
