"""New institutions and one-time invitations: who may create, and the link's rules (wrong, expired, used)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from pacs_cloud.models import AuditEvent, Institution, Invitation, Membership, Role
from tests.conftest import api_client, web_client
from worklist.actions import issue_accession_number, issue_patient_id

NEW = {
    "name": "湖畔县人民医院",
    "slug": "lakeside",
    "time_zone": "Asia/Shanghai",
    "character_set": "GB18030",
    "accession_prefix": "LK",
    "patient_id_prefix": "LKP",
    "languages": ["zh-Hans", "en"],
    "admin_name": "王芳",
    "admin_email": "wang@lakeside.example",
}
PASSPHRASE = "lakeside admin passphrase"


def create(client: APIClient) -> dict:
    answer = client.post("/api/v1/institutions/", NEW, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()


def token_of(link: str) -> str:
    return parse_qs(urlparse(link).query)["token"][0]


def accept(token: str, username: str = "wang@lakeside"):
    return APIClient().post(
        "/api/v1/invitation/accept/", {"token": token, "username": username, "password": PASSPHRASE}, format="json"
    )


@pytest.fixture
def created(tenants, platform_admin) -> dict:
    return create(api_client(platform_admin))


def test_a_platform_admin_creates_an_institution_with_its_settings_and_an_admin_invitation(created):
    institution = Institution.objects.get(slug="lakeside")
    assert (institution.name, institution.time_zone, institution.character_set) == (
        "湖畔县人民医院",
        "Asia/Shanghai",
        "GB18030",
    )
    assert (institution.accession_prefix, institution.patient_prefix, institution.languages) == (
        "LK",
        "LKP",
        ["zh-Hans", "en"],
    )
    assert issue_patient_id(institution).startswith("LKP") and issue_accession_number(institution).startswith("LK")
    invitation = Invitation.objects.get(institution=institution)
    assert invitation.roles == [Role.INSTITUTION_ADMIN]
    token = token_of(created["invitation"]["link"])
    # Only the token's hash is kept, and the link expires.
    assert invitation.token_hash == Invitation.hash_token(token) and token not in str(invitation.__dict__)
    assert invitation.expires_at - timezone.now() > dt.timedelta(hours=71)
    assert AuditEvent.objects.filter(action="institution.created", institution_id=institution.pk).exists()
    assert AuditEvent.objects.filter(action="invitation.created", object_id=str(invitation.pk)).exists()


@pytest.mark.parametrize("who", ["institution_admin", "technologist"])
def test_nobody_but_a_platform_admin_creates_an_institution(tenants, who):
    user = getattr(tenants.a, who)
    assert api_client(user).post("/api/v1/institutions/", NEW, format="json").status_code == 403
    assert web_client(user).get("/platform/institutions/new/").status_code == 404
    assert web_client(user).post("/platform/institutions/new/", NEW).status_code == 404
    assert not Institution.objects.filter(slug="lakeside").exists()


def test_the_page_refuses_a_bad_time_zone_and_a_taken_short_name(tenants, platform_admin):
    client = web_client(platform_admin)
    form = {**NEW, "kind": "hospital"}
    answer = client.post("/platform/institutions/new/", {**form, "time_zone": "Mars/Olympus"})
    assert "Unknown time zone" in answer.content.decode()
    answer = client.post("/platform/institutions/new/", {**form, "slug": "alpha"})
    assert "is taken" in answer.content.decode()
    answer = client.post("/platform/institutions/new/", form)
    assert "invitation-link" in answer.content.decode() and answer["Cache-Control"] == "no-store"


def test_the_invitation_works_once_and_the_new_admin_sees_only_their_institution(tenants, created):
    token = token_of(created["invitation"]["link"])
    answer = accept(token)
    assert answer.status_code == 201, answer.content
    assert answer.json()["roles"] == [Role.INSTITUTION_ADMIN]
    membership = Membership.objects.get(user__username="wang@lakeside")
    assert (membership.institution.slug, membership.role) == ("lakeside", Role.INSTITUTION_ADMIN)
    assert membership.user.display_name == "王芳"
    assert AuditEvent.objects.filter(action="invitation.accepted", actor="wang@lakeside").exists()
    # Used: refused, and the refusal is audited.
    again = accept(token, username="someone-else")
    assert again.status_code == 404 and "used already" in again.json()["detail"]
    assert web_client().get(f"/invitation/?token={token}").status_code == 404
    refusals = AuditEvent.objects.filter(action="invitation.refused", outcome="denied")
    assert {e.detail["reason"] for e in refusals} == {"used"}
    # The new administrator sees their own institution only.
    admin = api_client(membership.user)
    listed = admin.get("/api/v1/institutions/").json()["results"]
    assert [i["slug"] for i in listed] == ["lakeside"]
    assert admin.get(f"/api/v1/institutions/{tenants.a.institution.pk}/").status_code == 404
    assert admin.get(f"/api/v1/onboarding/{tenants.a.institution.pk}/").status_code == 404
    assert admin.get(f"/api/v1/onboarding/{membership.institution_id}/").status_code == 200


def test_a_wrong_or_expired_token_is_refused_and_audited(created):
    token = token_of(created["invitation"]["link"])
    wrong = accept(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert wrong.status_code == 404 and "not valid" in wrong.json()["detail"]
    Invitation.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    expired = accept(token)
    assert expired.status_code == 404 and "expired" in expired.json()["detail"]
    page = web_client().get(f"/invitation/?token={token}")
    assert page.status_code == 404 and "expired" in page.content.decode()
    assert not Membership.objects.filter(institution__slug="lakeside").exists()
    reasons = list(AuditEvent.objects.filter(action="invitation.refused").values_list("detail__reason", flat=True))
    assert reasons == ["unknown", "expired", "expired"]


def test_a_weak_password_or_a_taken_username_leaves_the_link_usable(tenants, created):
    token = token_of(created["invitation"]["link"])
    weak = APIClient().post(
        "/api/v1/invitation/accept/", {"token": token, "username": "wang", "password": "short"}, format="json"
    )
    assert weak.status_code == 400 and "password" in weak.json()
    taken = accept(token, username=tenants.a.technologist.username)
    assert taken.status_code == 400 and "taken" in str(taken.json())
    assert accept(token).status_code == 201


def test_an_institution_admin_invites_to_their_own_institution_only(tenants):
    admin = api_client(tenants.a.institution_admin)
    body = {"institution": str(tenants.a.institution.pk), "roles": ["technologist"], "display_name": "李雷"}
    answer = admin.post("/api/v1/invitations/", body, format="json")
    assert answer.status_code == 201 and answer.json()["state"] == "open"
    assert accept(token_of(answer.json()["link"]), username="lilei@alpha").status_code == 201
    assert Membership.objects.get(user__username="lilei@alpha").role == Role.TECHNOLOGIST
    listed = admin.get("/api/v1/invitations/").json()["results"]
    assert [i["state"] for i in listed] == ["accepted"] and "link" not in listed[0]
    foreign = admin.post("/api/v1/invitations/", {**body, "institution": str(tenants.b.institution.pk)}, format="json")
    assert foreign.status_code == 403
    assert api_client(tenants.a.technologist).post("/api/v1/invitations/", body, format="json").status_code == 403
