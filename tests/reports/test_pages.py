"""The lookup, the report page and the editor: what each user finds, and that every view is audited."""

from __future__ import annotations

from pacs_cloud.models import AuditEvent
from reports import actions
from tests.conftest import web_client

from .conftest import make_reading, write_and_sign


def test_the_clinician_finds_their_hospitals_reports_only(reading, tenants):
    report, _ = write_and_sign(reading)
    patient = reading.study.patient
    other = make_reading(tenants.c, "CHARLIE")
    write_and_sign(other)
    client = web_client(reading.tenant.clinician)
    for query in (
        {"patient_id": patient.patient_id},
        {"patient_name": "doe"},
        {"accession": reading.study.accession_number},
        {"modality": "CT", "status": "final"},
        {"date_from": str(reading.study.study_date), "date_to": str(reading.study.study_date)},
    ):
        page = client.get("/reports/", query)
        assert page.status_code == 200
        assert str(report.pk) in page.content.decode(), query
        assert other.study.accession_number not in page.content.decode()
    assert str(report.pk) not in client.get("/reports/", {"status": "draft"}).content.decode()
    api = client.get("/api/v1/reports/", {"patient_name": "DOE"}).json()
    assert [r["id"] for r in api["results"]] == [str(report.pk)]
    outsider = web_client(tenants.c.clinician).get("/reports/", {"accession": reading.study.accession_number})
    assert str(report.pk) not in outsider.content.decode()
    assert web_client(tenants.c.clinician).get(f"/reports/{report.pk}/").status_code == 404
    events = AuditEvent.objects.filter(action="report.list", actor_id=reading.tenant.clinician.pk)
    assert any(str(report.pk) in str(e.detail) for e in events)


def test_a_study_shared_with_a_user_shares_its_reports(reading, tenants):
    from archive.actions import grant_study_view

    report, _ = write_and_sign(reading)
    client = web_client(tenants.b.clinician)
    assert client.get(f"/reports/{report.pk}/").status_code == 404
    grant_study_view(reading.study, user=tenants.b.clinician)
    assert client.get(f"/reports/{report.pk}/").status_code == 200
    found = client.get("/api/v1/reports/", {"accession": reading.study.accession_number}).json()["results"]
    assert [r["id"] for r in found] == [str(report.pk)]


def test_the_report_page_shows_the_badge_key_images_and_viewer_link(reading):
    report, version = write_and_sign(reading)
    page = web_client(reading.tenant.clinician).get(f"/reports/{report.pk}/")
    html = page.content.decode()
    assert "Signature verified" in html
    assert version.verification_code in html
    assert "A 6 mm nodule" in html
    assert f"/viewer/studies/{reading.study.pk}/" in html
    assert f"/instances/{reading.instance.sop_instance_uid}/frames/1/rendered" in html
    assert "DICOM Encapsulated PDF in the archive: queued" in html
    assert AuditEvent.objects.filter(
        action="report.view", object_id=str(report.pk), actor_id=reading.tenant.clinician.pk
    ).exists()


def test_the_editor_opens_from_the_home_panel_and_is_audited(reading):
    client = web_client(reading.tenant.radiologist)
    home = client.get("/").content.decode()
    assert "Reports to write" in home and f"/reports/studies/{reading.study.pk}/write/" in home
    response = client.post(f"/reports/studies/{reading.study.pk}/write/", {"template": str(reading.template.pk)})
    assert response.status_code == 302
    editor = client.get(response["Location"])
    assert editor.status_code == 200
    html = editor.content.decode()
    assert "Axial CT of the chest without contrast." in html and "Normal chest" in html
    assert AuditEvent.objects.filter(action="report.edit", actor_id=reading.tenant.radiologist.pk).exists()
    # A clinician cannot open the editor.
    report_id = response["Location"].split("/")[2]
    assert web_client(reading.tenant.clinician).get(f"/reports/{report_id}/edit/").status_code == 404


def test_a_final_reports_editor_sends_back_to_the_page_until_an_addendum_opens(reading):
    report, _ = write_and_sign(reading)
    client = web_client(reading.tenant.radiologist)
    assert client.get(f"/reports/{report.pk}/edit/")["Location"] == f"/reports/{report.pk}/"
    opened = client.post(f"/reports/{report.pk}/addendum/", {"kind": "addendum"})
    assert opened["Location"] == f"/reports/{report.pk}/edit/"
    assert "Addendum" in client.get(f"/reports/{report.pk}/edit/").content.decode()
    report.refresh_from_db()
    assert report.draft_kind == "addendum"
    assert actions.do_open_addendum(report, acting_user=reading.tenant.radiologist, kind="addendum").pk == report.pk


def test_a_referral_share_of_the_study_shares_its_report_until_revoked(reading, tenants):
    from workflow.referrals.actions import do_revoke_share, do_share_study

    report, _ = write_and_sign(reading)
    client = web_client(tenants.b.clinician)
    query = {"accession": reading.study.accession_number}
    assert client.get("/api/v1/reports/", query).json()["results"] == []
    share = do_share_study(reading.study, tenants.b.institution, kind="second_opinion", actor_label="test")
    found = client.get("/api/v1/reports/", query).json()["results"]
    assert [r["id"] for r in found] == [str(report.pk)]
    assert client.get(f"/reports/{report.pk}/").status_code == 200
    assert web_client(tenants.c.clinician).get(f"/reports/{report.pk}/").status_code == 404
    do_revoke_share(share, actor_label="test", reason="done")
    assert client.get("/api/v1/reports/", query).json()["results"] == []
    assert client.get(f"/reports/{report.pk}/").status_code == 404


def test_the_lookup_costs_the_same_queries_for_one_report_or_many(reading, tenants):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.conftest import api_client

    write_and_sign(reading)
    client = api_client(reading.tenant.clinician)
    client.get("/api/v1/reports/")  # warm the token and membership caches

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/v1/reports/", {"status": "final"}).status_code == 200
        return len(queries)

    one = count()
    from archive.models import Study
    from pacs_cloud.lib.uids import new_uid
    from tests.conftest import PASSWORD

    from .conftest import archive_image

    user = reading.tenant.radiologist
    for accession in ("MORE1", "MORE2"):
        image = archive_image(
            reading.study.institution, study_uid=new_uid(), patient=reading.study.patient, accession=accession
        )
        study = Study.objects.get(pk=image.series.study_id)
        report, _ = actions.do_create_report(study, acting_user=user)
        report = actions.do_autosave_draft(
            report, acting_user=user, content={**report.draft, "impression": "Normal."}, base_revision=None
        )
        actions.do_sign_report(report, acting_user=user, password=PASSWORD)
    assert len(client.get("/api/v1/reports/", {"status": "final"}).json()["results"]) == 3
    assert count() == one


def test_a_printed_verification_code_is_checked_on_the_lookup_page(reading, tenants):
    report, version = write_and_sign(reading)
    page = web_client(reading.tenant.clinician).get("/reports/", {"code": version.verification_code.lower()})
    html = page.content.decode()
    assert "Signature verified" in html and f"/reports/{report.pk}/" in html
    assert AuditEvent.objects.filter(action="report.verify", object_id=str(report.pk)).exists()
    outsider = web_client(tenants.c.clinician).get("/reports/", {"code": version.verification_code}).content.decode()
    assert "No report you may see carries this code." in outsider and str(report.pk) not in outsider
