"""A report is visible exactly when its study is: ``reports.access`` composes ``archive.access``."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group
from django.http import Http404

from archive.access import can_view_study
from archive.actions import grant_study_view, revoke_study_view
from pacs_cloud.models import Role, role_group_name
from reports import access
from reports.actions import do_create_report
from reports.api import search
from tests.archive.test_access import study_at


def report_sees(user, report) -> bool:
    """Every reading of the report rule for one report, which must agree."""
    answers = {
        "visible": access.visible_reports(user).filter(pk=report.pk).exists(),
        "lookup": report.pk in {r.pk for r in search(user, {"limit": 200})[0]},
    }
    try:
        access.access_report(user, report.pk)
        answers["access"] = True
    except Http404:
        answers["access"] = False
    assert len(set(answers.values())) == 1, answers
    return answers["visible"]


@pytest.fixture
def reports(tenants):
    made = {}
    for name, tenant in (("a", tenants.a), ("a_granted", tenants.a), ("a_shared", tenants.a), ("b", tenants.b)):
        study = study_at(tenant.institution)
        made[name], _ = do_create_report(study, acting_user=tenant.radiologist)
    grant_study_view(made["a_granted"].study, user=tenants.b.radiologist)
    clinicians = Group.objects.get(name=role_group_name(tenants.b.institution, Role.CLINICIAN))
    grant_study_view(made["a_shared"].study, groups=[clinicians])
    return made


def test_a_report_is_visible_exactly_when_its_study_is(tenants, reports, platform_admin):
    users = [user for tenant in tenants for user in tenant.users.values()] + [platform_admin]
    seen = 0
    for user in users:
        for report in reports.values():
            expected = can_view_study(user, report.study)
            assert report_sees(user, report) == expected, (user.username, report.study.institution.slug)
            seen += expected
    # Own hospitals' reports for every clinical role, plus the two grants.
    assert seen == 4 * 3 + 4 * 1 + 2


def test_a_report_leaves_with_its_studys_grant(tenants, reports):
    report = reports["a_granted"]
    assert report_sees(tenants.b.radiologist, report)
    revoke_study_view(report.study, user=tenants.b.radiologist)
    assert not report_sees(tenants.b.radiologist, report)


def test_missing_and_not_yours_reports_are_the_same_404(tenants, reports):
    refusals = []
    for pk in (uuid.uuid4(), reports["b"].pk, "not-a-uuid"):
        with pytest.raises(Http404) as refused:
            access.access_report(tenants.a.clinician, pk)
        refusals.append(str(refused.value))
    assert set(refusals) == {"No such report"}
