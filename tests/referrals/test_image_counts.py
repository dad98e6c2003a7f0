"""Referral and share pages count a study's images; its archived report shows as the report, not a series."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from pydicom.uid import generate_uid

from archive.ingest import IngestSession, Source, store_instance, store_part10
from archive.models import Study
from tests.archive.conftest import make_ct, write
from tests.archive.test_image_counts import report_document
from tests.conftest import api_client, web_client

from .conftest import sent
from .test_share_pages import share_form


@pytest.fixture
def reported_ct(tenants, tmp_path) -> Study:
    """Two CT series (2 and 1 images) and the archived report (a DOC series): 3 series, 4 objects stored."""
    study_uid = generate_uid()
    for series_number, images in [(1, 2), (2, 1)]:
        series_uid = generate_uid()
        for number in range(images):
            ds = make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=number + 1)
            ds.SeriesNumber = series_number
            ds.StudyDescription = "CT CHEST"
            store_instance(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), institution=tenants.a.institution)
    store_part10(
        report_document(study_uid),
        institution=tenants.a.institution,
        session=IngestSession(Source("report", "reports")),
    )
    study = Study.objects.get(study_instance_uid=study_uid)
    assert (study.num_series, study.num_instances, study.modalities) == (3, 4, "CT\\DOC")
    return study


def _row(page: str, marker: str) -> str:
    start = page.index(marker)
    return page[start : page.index("</tr>", start)]


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]


def test_the_new_referral_form_lists_image_series_and_counts(tenants, reported_ct):
    page = web_client(tenants.a.referral_coordinator).get("/referrals/new/", {"q": "P0001"}).content.decode()
    cells = _cells(_row(page, f'value="{reported_ct.pk}"'))
    assert cells[-3:] == ["CT Report", "2", "3"]
    assert "DOC" not in page


def test_the_referral_page_shows_two_series_of_ct_and_links_the_report(tenants, reported_ct):
    referral = sent(tenants, reported_ct)
    report_url = reverse("reports-open-study-report", args=[reported_ct.pk])
    for user in (tenants.a.referral_coordinator, tenants.b.referral_coordinator):
        page = web_client(user).get(f"/referrals/{referral.pk}/").content.decode()
        row = _row(page, f'data-study="{reported_ct.pk}"')
        assert "2 series, 3 images (CT)" in row and f'href="{report_url}">Report</a>' in row
        assert "DOC" not in page and "3 series" not in page and "4 images" not in page


def test_the_referral_api_gives_image_counts_beside_what_is_stored(tenants, reported_ct):
    referral = sent(tenants, reported_ct)
    body = api_client(tenants.b.referral_coordinator).get(f"/api/v1/referrals/{referral.pk}/").json()
    (row,) = body["studies"]
    assert (row["image_series"], row["image_instances"], row["image_modalities"]) == (2, 3, ["CT"])
    assert row["has_report_document"] is True
    # What DICOM stores is still said as it is (Modalities in Study, every object).
    assert (row["modalities"], row["num_instances"]) == ("CT\\DOC", 4)


def test_the_share_pages_show_two_series_of_ct_and_the_report(tenants, reported_ct):
    a, b = tenants.a, tenants.b
    form = web_client(a.referral_coordinator).get("/shares/new/", {"q": "P0001"}).content.decode()
    assert _cells(_row(form, f'value="{reported_ct.pk}"'))[-3:] == ["CT Report", "2", "3"]
    assert share_form(a.referral_coordinator, reported_ct, b.institution).status_code == 302
    for user in (a.referral_coordinator, b.referral_coordinator):
        page = web_client(user).get("/shares/").content.decode()
        assert "CT CHEST" in page and "(2 series, CT)" in page
        assert '<span class="badge">Report</span>' in page
        assert "DOC" not in page and "3 series" not in page
