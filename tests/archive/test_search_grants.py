"""Searches remember the caller's grants, and forget them the moment a grant changes here."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from guardian.shortcuts import assign_perm, remove_perm

from archive import access
from archive.models import Patient, Study, StudyGroupObjectPermission, StudyUserObjectPermission
from pacs_cloud import authcache
from pacs_cloud.models import role_group_name

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_memo():
    authcache.forget()
    yield
    authcache.forget()


@pytest.fixture
def bravo_study(tenants) -> Study:
    patient = Patient.objects.create(institution=tenants.b.institution, patient_id="B-1", name="BRAVO^PAT")
    return Study.objects.create(institution=tenants.b.institution, patient=patient, study_instance_uid="1.2.3.4")


def searchable(user) -> set:
    return set(access.searchable_studies(user).values_list("pk", flat=True))


def test_repeated_searches_read_the_grants_once(tenants, django_assert_num_queries):
    searchable(tenants.a.radiologist)
    with django_assert_num_queries(1):  # the search itself
        searchable(tenants.a.radiologist)


def test_a_grant_saved_here_is_searchable_at_once(tenants, bravo_study):
    reader = tenants.a.radiologist
    assert bravo_study.pk not in searchable(reader)
    assign_perm("archive.view_study", reader, bravo_study)
    assert bravo_study.pk in searchable(reader)


def test_a_grant_written_in_bulk_is_searchable_at_once(tenants, bravo_study):
    reader, permission = tenants.a.radiologist, Permission.objects.get(codename="view_study")
    assert bravo_study.pk not in searchable(reader)
    StudyUserObjectPermission.objects.bulk_create(
        [StudyUserObjectPermission(user=reader, permission=permission, content_object=bravo_study)]
    )
    assert bravo_study.pk in searchable(reader)


def test_a_group_grant_written_in_bulk_is_searchable_at_once(tenants, bravo_study):

    clinician = tenants.a.clinician
    group = Group.objects.get(name=role_group_name(tenants.a.institution, "clinician"))
    assert bravo_study.pk not in searchable(clinician)
    StudyGroupObjectPermission.objects.bulk_create(
        [
            StudyGroupObjectPermission(
                group=group, permission=Permission.objects.get(codename="view_study"), content_object=bravo_study
            )
        ]
    )
    assert bravo_study.pk in searchable(clinician)


def test_a_grant_taken_away_here_ends_the_search_at_once(tenants, bravo_study):
    reader = tenants.a.radiologist
    assign_perm("archive.view_study", reader, bravo_study)
    assert bravo_study.pk in searchable(reader)
    remove_perm("archive.view_study", reader, bravo_study)
    assert bravo_study.pk not in searchable(reader)
