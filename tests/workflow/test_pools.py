"""Pools, members and reading agreements: one validation whether changed on the page or through the API."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from pacs_cloud.models import AuditEvent, Membership, Role
from tests.conftest import api_client, make_user, web_client
from workflow import actions
from workflow.models import PoolMember, ReadingAgreement


@pytest.fixture
def owner_admin(centre):
    user = make_user("admin@delta")
    Membership.objects.create(user=user, institution=centre.institution, role=Role.INSTITUTION_ADMIN)
    return user


@pytest.fixture
def newcomer(centre):
    user = make_user("reader4@delta")
    Membership.objects.create(user=user, institution=centre.institution, role=Role.RADIOLOGIST)
    return user


def test_the_page_and_the_api_refuse_the_same_claim_cap(centre, owner_admin):
    member = PoolMember.objects.get(user=centre.readers[0])
    page = web_client(owner_admin).post(f"/workflow/pool-members/{member.pk}/", {"claim_cap": "5000"})
    assert page.status_code == 400
    assert "The claim cap is a whole number from 1 to 999." in page.content.decode()
    api = api_client(owner_admin).patch(f"/api/v1/pool-members/{member.pk}/", {"claim_cap": 5000}, format="json")
    assert api.status_code == 400
    assert api.json() == {"claim_cap": ["The claim cap is a whole number from 1 to 999."]}
    member.refresh_from_db()
    assert member.claim_cap is None
    assert not AuditEvent.objects.filter(action="workflow.pool.member_changed").exists()


def test_the_page_and_the_api_refuse_a_member_already_in_the_pool(centre, owner_admin):
    reader = centre.readers[0]
    page = web_client(owner_admin).post(f"/workflow/pools/{centre.pool.pk}/members/", {"username": reader.username})
    assert page.status_code == 400
    assert "is already a member of Delta night pool" in page.content.decode()
    api = api_client(owner_admin).post(
        "/api/v1/pool-members/",
        {"pool": str(centre.pool.pk), "user": reader.username, "credentialed_for": []},
        format="json",
    )
    assert api.status_code == 400 and "already a member" in api.json()["user"][0]
    assert PoolMember.objects.filter(pool=centre.pool, user=reader).count() == 1


def test_the_page_refuses_a_hospital_that_does_not_exist(tenants, centre, owner_admin, newcomer):
    page = web_client(owner_admin).post(
        f"/workflow/pools/{centre.pool.pk}/members/",
        {"username": newcomer.username, "credentialed_for": ["not-a-hospital"]},
    )
    assert page.status_code == 400
    assert "is not a hospital" in page.content.decode()
    assert not PoolMember.objects.filter(user=newcomer).exists()


def test_unticking_active_on_the_page_deactivates_the_member(centre, owner_admin):
    member = PoolMember.objects.get(user=centre.readers[0])
    response = web_client(owner_admin).post(f"/workflow/pool-members/{member.pk}/", {"subspecialties": "neuro"})
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.is_active is False
    event = AuditEvent.objects.get(action="workflow.pool.member_changed", object_id=str(member.pk))
    assert event.actor_id == owner_admin.pk


def test_a_member_added_and_removed_is_audited(tenants, centre, owner_admin, newcomer):
    member = actions.do_add_pool_member(
        centre.pool,
        newcomer,
        acting_user=owner_admin,
        subspecialties=["MSK ", "msk"],
        credentialed_for=[str(tenants.a.institution.pk)],
        claim_cap="4",
    )
    assert (member.subspecialties, member.claim_cap) == (["msk"], 4)
    assert list(member.credentialed_for.all()) == [tenants.a.institution]
    actions.do_remove_pool_member(member, acting_user=owner_admin)
    assert not PoolMember.objects.filter(pk=member.pk).exists()
    assert list(
        AuditEvent.objects.filter(object_id=str(member.pk)).order_by("id").values_list("action", flat=True)
    ) == ["workflow.pool.member_added", "workflow.pool.member_removed"]


def test_only_the_owners_radiologists_join_a_pool(tenants, centre, owner_admin):
    with pytest.raises(ValidationError) as refused:
        actions.do_add_pool_member(centre.pool, tenants.a.radiologist, acting_user=owner_admin)
    assert "is not a radiologist of Delta Reading Centre" in refused.value.message_dict["user"][0]


def test_an_agreement_ending_before_it_starts_is_refused(tenants, centre, owner_admin):
    response = api_client(owner_admin).patch(
        f"/api/v1/reading-agreements/{centre.agreement.pk}/",
        {"valid_from": "2026-05-01", "valid_until": "2026-04-01"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"valid_until": ["The last day comes before the first."]}
    again = api_client(owner_admin).post(
        "/api/v1/reading-agreements/",
        {"hospital": str(tenants.a.institution.pk), "pool": str(centre.pool.pk)},
        format="json",
    )
    assert again.status_code == 400
    assert ReadingAgreement.objects.filter(hospital=tenants.a.institution, pool=centre.pool).count() == 1


def test_a_pool_keeps_its_owner_and_a_unique_name(tenants, centre, owner_admin):
    client = api_client(owner_admin)
    moved = client.patch(f"/api/v1/pools/{centre.pool.pk}/", {"owner": str(tenants.a.institution.pk)}, format="json")
    assert moved.status_code == 400
    created = client.post(
        "/api/v1/pools/", {"owner": str(centre.institution.pk), "name": "Delta day pool", "claim_cap": 4}, format="json"
    )
    assert created.status_code == 201, created.content
    assert AuditEvent.objects.filter(action="workflow.pool.created", object_id=created.json()["id"]).exists()
    renamed = client.patch(f"/api/v1/pools/{created.json()['id']}/", {"name": "Delta night pool"}, format="json")
    assert renamed.status_code == 400
