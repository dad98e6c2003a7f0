"""The worklist, task, policy and pool pages as a signed-in user sees them."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from pacs_cloud.models import AuditEvent, Membership, Role
from tests.conftest import make_user
from tests.workflow.conftest import make_study, save_policy
from workflow.actions import do_start_reading_process
from workflow.models import PoolMember, RoutingPolicy


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def offered(tenants, centre):
    save_policy(
        tenants.a.institution,
        {"rules": [{"name": "Pool", "offer_to": [{"kind": "own"}, {"kind": "pool", "pool": str(centre.pool.pk)}]}]},
    )
    study = make_study(tenants.a.institution, patient_name="SECRET^PATIENT", accession="ACC-PAGE")
    return do_start_reading_process(study).tasks.get()


def test_the_worklist_shows_offers_without_identity_and_claiming_opens_the_study(tenants, centre, offered):
    reader = signed_in(centre.readers[0])
    page = reader.get("/workflow/")
    html = page.content.decode()
    assert page.status_code == 200
    assert f'data-task="{offered.pk}"' in html and "Alpha County Hospital" in html
    assert "SECRET" not in html
    task_page = reader.get(f"/workflow/tasks/{offered.pk}/").content.decode()
    assert "SECRET" not in task_page and "once you claim" in task_page
    claimed = reader.post(f"/workflow/tasks/{offered.pk}/claim/")
    assert claimed.status_code == 302 and claimed["Location"] == f"/workflow/tasks/{offered.pk}/open/"
    opened = reader.get(claimed["Location"])
    assert opened.status_code == 302 and opened["Location"] == f"/viewer/studies/{offered.study_id}/"
    assert reader.get(opened["Location"]).status_code == 200  # the claim's grant opens the viewer
    detail = reader.get(f"/workflow/tasks/{offered.pk}/").content.decode()
    assert "SECRET, PATIENT" in detail and "Open in the viewer" in detail
    assert AuditEvent.objects.filter(action="workflow.readingtask.open", patient_id__startswith="P").exists()
    assert f'data-task="{offered.pk}"' in reader.get("/workflow/?view=claimed").content.decode()
    assert f'data-task="{offered.pk}"' not in signed_in(centre.readers[1]).get("/workflow/rows/").content.decode()


def test_a_lost_race_is_explained(tenants, centre, offered):
    signed_in(centre.readers[0]).post(f"/workflow/tasks/{offered.pk}/claim/")
    loser = signed_in(centre.readers[1])
    response = loser.post(f"/workflow/tasks/{offered.pk}/claim/", follow=True)
    assert "no longer open" in response.content.decode()


def test_worklist_filters_and_bad_queries(tenants, centre, offered):
    reader = signed_in(centre.readers[0])
    assert f'data-task="{offered.pk}"' not in reader.get("/workflow/?modality=MR").content.decode()
    assert f'data-task="{offered.pk}"' in reader.get("/workflow/?modality=CT&ordering=-sla").content.decode()
    assert reader.get("/workflow/?ordering=nonsense").status_code == 400
    assert reader.get(f"/workflow/tasks/{offered.pk}/", follow=False).status_code == 200
    assert signed_in(tenants.c.radiologist).get(f"/workflow/tasks/{offered.pk}/").status_code == 404
    assert signed_in(tenants.c.radiologist).post(f"/workflow/tasks/{offered.pk}/claim/").status_code == 404
    assert signed_in(centre.readers[0]).get(f"/workflow/tasks/{offered.pk}/open/").status_code == 404


def test_the_policy_pages_draw_dry_run_and_save_versions(tenants, centre, offered):
    admin = signed_in(tenants.a.institution_admin)
    listing = admin.get("/workflow/policies/").content.decode()
    current = RoutingPolicy.objects.get(institution=tenants.a.institution, is_current=True)
    assert f"/workflow/policies/{current.pk}/diagram.svg" in listing
    svg = admin.get(f"/workflow/policies/{current.pk}/diagram.svg?highlight=0")
    assert svg["Content-Type"] == "image/svg+xml" and b'stroke="#1f6feb"' in svg.content
    run = admin.get(f"/workflow/policies/{current.pk}/", {"study": "ACC-PAGE", "priority": "stat"}).content.decode()
    assert "Matched: rule 1" in run and "SLA 30 min" in run
    assert "Completing at (UTC+8)" in run  # the form's time is the hospital's wall-clock time
    impossible = admin.get(f"/workflow/policies/{current.pk}/", {"study": "ACC-PAGE", "at": "2026-02-30T10:00"})
    assert impossible.status_code == 200 and "The time is not a date and time" in impossible.content.decode()
    assert "No study" in admin.get(f"/workflow/policies/{current.pk}/", {"study": "NOPE"}).content.decode()
    by_facts = admin.get(f"/workflow/policies/{current.pk}/", {"modality": "MR", "patient_age": "7"}).content.decode()
    assert "Matched: rule 1" in by_facts
    edit = admin.get("/workflow/policies/edit/")
    assert edit.status_code == 200 and str(centre.pool.pk) in edit.content.decode()
    broken = admin.post("/workflow/policies/edit/", {"definition": "{not json", "name": "x"})
    assert broken.status_code == 400 and "Not valid JSON" in broken.content.decode()
    invalid = admin.post(
        "/workflow/policies/edit/", {"definition": json.dumps({"rules": [{"name": "x", "offer_to": []}]})}
    )
    assert invalid.status_code == 400 and "rules[0].offer_to" in invalid.content.decode()
    saved = admin.post(
        "/workflow/policies/edit/", {"definition": json.dumps({"rules": []}), "name": "Own only", "note": "simpler"}
    )
    assert saved.status_code == 302
    assert RoutingPolicy.objects.get(institution=tenants.a.institution, is_current=True).version == 2
    # Radiologists may look at the policy but not change it; outsiders see nothing.
    assert signed_in(tenants.a.radiologist).get("/workflow/policies/").status_code == 200
    assert signed_in(tenants.a.radiologist).get("/workflow/policies/edit/").status_code == 404
    assert signed_in(tenants.c.institution_admin).get(f"/workflow/policies/{current.pk}/").status_code == 404


def test_the_pool_page_lets_the_owner_manage_members(tenants, centre):
    owner_admin = make_user("admin@delta")
    Membership.objects.create(user=owner_admin, institution=centre.institution, role=Role.INSTITUTION_ADMIN)
    newcomer = make_user("reader4@delta")
    Membership.objects.create(user=newcomer, institution=centre.institution, role=Role.RADIOLOGIST)
    admin = signed_in(owner_admin)
    assert "Delta night pool" in admin.get("/workflow/pools/").content.decode()
    admin.post(
        f"/workflow/pools/{centre.pool.pk}/members/",
        {
            "username": "reader4@delta",
            "subspecialties": "Neuro, msk",
            "credentialed_for": [str(tenants.a.institution.pk)],
        },
    )
    member = PoolMember.objects.get(user=newcomer)
    assert member.subspecialties == ["msk", "neuro"]
    assert list(member.credentialed_for.all()) == [tenants.a.institution]
    admin.post(f"/workflow/pool-members/{member.pk}/", {"remove": "1"})
    assert not PoolMember.objects.filter(user=newcomer).exists()
    response = admin.post(
        f"/workflow/pools/{centre.pool.pk}/members/", {"username": "radiologist@charlie"}, follow=True
    )
    assert "is not a radiologist of" in response.content.decode()
    # A hospital's administrator sees the pool it sends to but cannot change it.
    assert (
        signed_in(tenants.a.institution_admin)
        .post(f"/workflow/pools/{centre.pool.pk}/members/", {"username": "x"})
        .status_code
        == 404
    )


def test_the_home_page_shows_readers_and_administrators_their_reading_panels(tenants, centre, offered):
    reader = signed_in(centre.readers[0]).get("/").content.decode()
    assert "1 offered to you" in reader and "Alpha County Hospital" in reader and "SECRET" not in reader
    admin = signed_in(tenants.a.institution_admin).get("/").content.decode()
    assert "1 reading tasks waiting" in admin and "Routing policy version 1" in admin
