"""From the viewer, the radiologist holding the study's reading task goes straight to the report editor."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pacs_cloud.models import Membership, Role
from reports.models import Report
from tests.conftest import make_user, web_client
from tests.reports.conftest import make_reading

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
