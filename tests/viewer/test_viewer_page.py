"""The viewer page and the study manifest it loads."""

from __future__ import annotations

from django.test import Client
from django.urls import reverse

from pacs_cloud.models import AuditEvent
from viewer.views import MPR_URL_TEMPLATE

from ..conftest import api_client
from .conftest import sample, store, with_new_uids


def test_a_member_opens_the_viewer_and_the_opening_is_audited(ct_volume, tenants):
    vol = ct_volume()
    study = vol.instances[0].series.study
    browser = Client()
    browser.force_login(tenants.a.clinician)
    response = browser.get(reverse("viewer-open-study", args=[study.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Phantom, Volume" in page and 'src="/static/viewer/viewer.js"' in page
    assert "<script>" not in page  # no inline scripts under the CSP
    events = AuditEvent.objects.filter(action="study.view", object_id=str(study.pk))
    assert events.count() == 1 and events.get().detail["via"] == "viewer"
    # The page's own API call and its frames do not audit the same opening again.
    browser.get(reverse("viewer-api-study", args=[study.pk]))
    assert events.count() == 1


def test_the_viewer_needs_a_login_and_hides_other_institutions_studies(ct_volume, tenants):
    study = ct_volume().instances[0].series.study
    url = reverse("viewer-open-study", args=[study.pk])
    assert Client().get(url).status_code == 302
    outsider = Client()
    outsider.force_login(tenants.c.radiologist)
    assert outsider.get(url).status_code == 404
    assert outsider.get(reverse("viewer-open-study", args=["4f9f2b9e-0000-4000-8000-000000000000"])).status_code == 404


def test_the_manifest_describes_series_images_geometry_and_presets(ct_volume, tenants, tmp_path):
    vol = ct_volume(shuffle_numbers=True)
    study = vol.instances[0].series.study
    mr = with_new_uids(sample("emri_small.dcm"), study=study.study_instance_uid)
    mr.PatientID, mr.PatientName, mr.SeriesNumber = "PHANTOM-1", "Phantom^Volume", 7
    store(mr, tenants.a.institution, tmp_path)
    data = api_client(tenants.a.radiologist).get(reverse("viewer-api-study", args=[study.pk])).json()
    assert data["patient"]["name"] == "Phantom^Volume"
    assert [s["number"] for s in data["series"]] == [2, 7]
    ct = data["series"][0]
    assert [i["number"] for i in ct["instances"]] == list(range(1, 41))
    assert ct["instances"][0]["pixel_spacing"] == [0.7, 0.7]
    assert ct["windows"][0] == {"center": 40.0, "width": 400.0, "explanation": "SOFT TISSUE"}
    assert ct["mpr"]["sagittal"] == {
        "count": 64,
        "rows": 40,
        "columns": 64,
        "row_spacing": 2.5,
        "column_spacing": 0.7,
        "spacing": 0.7,
    }
    assert ct["value_range"] == [-33792.0, 31743.0]
    mr_series = data["series"][1]
    assert mr_series["instances"][0]["frames"] == 10
    assert set(data["presets"]) == {"brain", "lung", "bone", "abdomen"}
    assert data["urls"]["mpr"] == MPR_URL_TEMPLATE
    assert MPR_URL_TEMPLATE.format(series=ct["id"], plane="axial", index=3) == reverse(
        "viewer-render-mpr", args=[ct["id"], "axial", 3]
    )


def test_the_manifest_is_404_for_an_outsider(ct_volume, tenants):
    study = ct_volume().instances[0].series.study
    assert api_client(tenants.c.clinician).get(reverse("viewer-api-study", args=[study.pk])).status_code == 404


def test_the_home_page_lists_studies_the_user_opened_with_a_link_to_the_viewer(ct_volume, tenants):
    study = ct_volume().instances[0].series.study
    browser = Client()
    browser.force_login(tenants.a.radiologist)
    assert "Opened recently" not in browser.get("/").content.decode()
    browser.get(reverse("viewer-open-study", args=[study.pk]))
    home = browser.get("/").content.decode()
    assert "Opened recently" in home
    assert reverse("viewer-open-study", args=[study.pk]) in home
    assert "Phantom, Volume" in home
    # Another user's openings are theirs alone.
    other = Client()
    other.force_login(tenants.a.clinician)
    assert "Opened recently" not in other.get("/").content.decode()
