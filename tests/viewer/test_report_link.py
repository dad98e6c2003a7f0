"""From the viewer, the radiologist holding the study's reading task goes straight to the report editor."""

from __future__ import annotations

import pytest
from django.urls import reverse

from archive.models import Study
from pacs_cloud.models import AuditEvent, Membership, Role
from reports.actions import do_run_export
from reports.models import Report, ReportExport
from tests.conftest import make_user, web_client
from tests.reports.conftest import make_reading, write_and_sign

pytestmark = pytest.mark.django_db


def viewer(user, study):
    return web_client(user).get(reverse("viewer-open-study", args=[study.pk]))


def test_the_holder_of_the_reading_task_is_offered_the_report_editor(tenants):
    reading = make_reading(tenants.a)
    response = viewer(tenants.a.radiologist, reading.study)
    assert response.status_code == 200 and response.context["holds_reading_task"] is True
    action = reverse("reports-write-report", args=[reading.study.pk])
    assert f'action="{action}"' in response.content.decode()
    # The button opens the holder's report in the editor.
    opened = web_client(tenants.a.radiologist).post(action)
    report = Report.objects.get(study=reading.study, author=tenants.a.radiologist)
    assert opened.status_code == 302
    assert opened["Location"] == reverse("reports-edit-report", args=[report.pk])


def test_another_radiologist_and_a_clinician_are_not_offered_it(tenants):
    reading = make_reading(tenants.a)
    colleague = make_user("second-radiologist@alpha")
    Membership.objects.create(user=colleague, institution=tenants.a.institution, role=Role.RADIOLOGIST)
    action = reverse("reports-write-report", args=[reading.study.pk])
    for user in (colleague, tenants.a.clinician):
        response = viewer(user, reading.study)
        assert response.status_code == 200 and response.context["holds_reading_task"] is False
        assert action not in response.content.decode()
        assert 'id="write-report"' not in response.content.decode()


def test_before_the_task_is_claimed_nobody_is_offered_it(tenants):
    reading = make_reading(tenants.a, claim=False)
    response = viewer(tenants.a.radiologist, reading.study)
    assert response.context["holds_reading_task"] is False
    assert 'id="write-report"' not in response.content.decode()


def test_the_archived_report_is_offered_as_the_report_to_whoever_may_see_it(tenants):
    reading = make_reading(tenants.a)
    report, version = write_and_sign(reading)
    assert do_run_export(ReportExport.objects.get(version=version, target=ReportExport.Target.DICOM))
    study = Study.objects.get(pk=reading.study.pk)
    assert study.has_report_document
    link = reverse("reports-open-study-report", args=[study.pk])
    # The clinician may see the study, hence its report: the viewer offers it beside the images.
    page = viewer(tenants.a.clinician, study)
    assert page.status_code == 200 and f'id="open-report" href="{link}"' in page.content.decode()
    manifest = web_client(tenants.a.clinician).get(reverse("viewer-api-study", args=[study.pk])).json()
    assert manifest["urls"]["report"] == link
    assert manifest["modalities"] == "CT" and [s["modality"] for s in manifest["series"]] == ["CT"]
    opened = web_client(tenants.a.clinician).get(link)
    assert opened.status_code == 302 and opened["Location"] == reverse("reports-view-report", args=[report.pk])
    # The outsider learns nothing, and the refusal is audited.
    assert web_client(tenants.c.clinician).get(link).status_code == 404
    assert AuditEvent.objects.filter(action="study.view_refused", object_id=str(study.pk)).exists()


def test_a_study_without_an_archived_report_offers_none(tenants):
    reading = make_reading(tenants.a)
    page = viewer(tenants.a.clinician, reading.study).content.decode()
    assert 'id="open-report"' not in page
    manifest = web_client(tenants.a.clinician).get(reverse("viewer-api-study", args=[reading.study.pk])).json()
    assert manifest["urls"]["report"] is None
    # A study with no signed report answers as a missing one.
    link = reverse("reports-open-study-report", args=[reading.study.pk])
    assert web_client(tenants.a.clinician).get(link).status_code == 404
