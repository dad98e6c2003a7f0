"""Institution administrators manage their own members, in the browser and the API, and only those."""

import pytest

from pacs_cloud.authentication import issue_token
from pacs_cloud.models import ApiToken, AuditEvent, Membership, Role, User
from tests.conftest import api_client, make_user, web_client


def members_url(tenant):
    return f"/institutions/{tenant.institution.pk}/members/"


def member_url(tenant, user):
    return f"{members_url(tenant)}{user.uuid}/"


def roles_of(user, tenant):
    return set(Membership.objects.filter(user=user, institution=tenant.institution).values_list("role", flat=True))


def create(client, tenant, username, roles, password="a long enough passphrase"):
    return client.post(
        members_url(tenant),
        {"form": "create", "new-username": username, "new-password": password, "new-roles": roles},
    )


class TestTheMembersPage:
    def test_an_admin_sees_the_members_of_their_institution_only(self, tenants):
        page = web_client(tenants.a.institution_admin).get(members_url(tenants.a)).content.decode()
        assert "radiologist@alpha" in page and "clinician@alpha" in page
        assert "@bravo" not in page and "@charlie" not in page

    def test_an_admin_creates_a_member_who_can_sign_in(self, tenants):
        client = web_client(tenants.a.institution_admin)
        response = create(client, tenants.a, "nurse@alpha", ["clinician", "technologist"])
        assert response.status_code == 302
        nurse = User.objects.get(username="nurse@alpha")
        assert roles_of(nurse, tenants.a) == {"clinician", "technologist"}
        assert (
            web_client().post("/login/", {"username": "nurse@alpha", "password": "a long enough passphrase"})[
                "Location"
            ]
            == "/"
        )
        event = AuditEvent.objects.get(action="member.created")
        assert event.actor == "institution_admin@alpha"
        assert event.institution_id == tenants.a.institution.pk
        assert event.object_id == str(nurse.uuid)
        assert event.detail["roles"] == ["clinician", "technologist"]

    def test_a_weak_password_or_a_taken_username_is_refused_with_a_reason(self, tenants):
        client = web_client(tenants.a.institution_admin)
        weak = create(client, tenants.a, "nurse@alpha", ["clinician"], password="short")
        assert weak.status_code == 200 and "too short" in weak.content.decode()
        taken = create(client, tenants.a, "radiologist@bravo", ["clinician"])
        assert taken.status_code == 200 and "is taken" in taken.content.decode()
        none = create(client, tenants.a, "nurse@alpha", [])
        assert none.status_code == 200 and "This field is required" in none.content.decode()
        assert not User.objects.filter(username="nurse@alpha").exists()

    def test_an_admin_adds_and_removes_roles(self, tenants):
        client = web_client(tenants.a.institution_admin)
        clinician = tenants.a.clinician
        response = client.post(member_url(tenants.a, clinician), {"roles": ["clinician", "referral_coordinator"]})
        assert response.status_code == 302
        assert roles_of(clinician, tenants.a) == {"clinician", "referral_coordinator"}
        client.post(member_url(tenants.a, clinician), {"roles": ["referral_coordinator"]})
        assert roles_of(clinician, tenants.a) == {"referral_coordinator"}
        assert clinician.groups.filter(name="alpha:referral_coordinator").exists()
        assert not clinician.groups.filter(name="alpha:clinician").exists()
        actions = list(AuditEvent.objects.filter(action__startswith="membership.").values_list("action", flat=True))
        assert actions == ["membership.added", "membership.removed"]

    def test_an_admin_gives_a_role_to_someone_from_another_institution(self, tenants):
        reader = tenants.b.radiologist
        response = web_client(tenants.a.institution_admin).post(
            members_url(tenants.a), {"form": "add", "add-username": reader.username, "add-role": "radiologist"}
        )
        assert response.status_code == 302
        assert roles_of(reader, tenants.a) == {"radiologist"}
        assert roles_of(reader, tenants.b) == {"radiologist"}  # untouched

    def test_deactivating_a_member_ends_their_access(self, tenants):
        clinician = tenants.a.clinician
        _, key = issue_token(clinician)
        session = web_client(clinician)
        assert session.get("/").status_code == 200
        web_client(tenants.a.institution_admin).post(f"{member_url(tenants.a, clinician)}active/", {"active": "0"})
        clinician.refresh_from_db()
        assert not clinician.is_active
        assert session.get("/").status_code == 302  # back to the sign-in page
        client = api_client(tenants.a.radiologist)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        assert client.get("/api/v1/institutions/").status_code == 401
        assert not ApiToken.objects.filter(user=clinician, revoked_at__isnull=True).exists()
        assert AuditEvent.objects.filter(action="member.deactivated", object_id=str(clinician.uuid)).exists()
        web_client(tenants.a.institution_admin).post(f"{member_url(tenants.a, clinician)}active/", {"active": "1"})
        clinician.refresh_from_db()
        assert clinician.is_active
        assert AuditEvent.objects.filter(action="member.reactivated").exists()

    def test_deactivating_a_shared_member_leaves_their_other_institution_alone(self, tenants):
        reader = tenants.b.radiologist
        Membership.objects.create(user=reader, institution=tenants.a.institution, role=Role.RADIOLOGIST)
        web_client(tenants.a.institution_admin).post(f"{member_url(tenants.a, reader)}active/", {"active": "0"})
        reader.refresh_from_db()
        assert reader.is_active
        assert not Membership.objects.get(user=reader, institution=tenants.a.institution).is_active
        assert Membership.objects.get(user=reader, institution=tenants.b.institution).is_active

    def test_the_last_administrator_cannot_remove_or_deactivate_themselves(self, tenants):
        admin = tenants.a.institution_admin
        client = web_client(admin)
        response = client.post(member_url(tenants.a, admin), {"roles": ["clinician"]})
        assert response.status_code == 200
        assert "at least one active administrator" in response.content.decode()
        assert roles_of(admin, tenants.a) == {"institution_admin"}
        client.post(f"{member_url(tenants.a, admin)}active/", {"active": "0"}, follow=True)
        admin.refresh_from_db()
        assert admin.is_active

    def test_an_admin_never_touches_another_institution(self, tenants):
        client = web_client(tenants.a.institution_admin)
        victim = tenants.b.clinician
        assert client.get(members_url(tenants.b)).status_code == 404
        assert create(client, tenants.b, "intruder@bravo", ["clinician"]).status_code == 404
        assert client.get(member_url(tenants.b, victim)).status_code == 404
        assert client.post(member_url(tenants.b, victim), {"roles": ["radiologist"]}).status_code == 404
        assert client.post(f"{member_url(tenants.b, victim)}active/", {"active": "0"}).status_code == 404
        # Their own institution's URL with another institution's member: not found either.
        assert client.get(member_url(tenants.a, victim)).status_code == 404
        assert client.post(f"{member_url(tenants.a, victim)}active/", {"active": "0"}).status_code == 404
        victim.refresh_from_db()
        assert victim.is_active and roles_of(victim, tenants.b) == {"clinician"}
        assert not User.objects.filter(username="intruder@bravo").exists()

    @pytest.mark.parametrize("role", [r for r in Role if r != Role.INSTITUTION_ADMIN])
    def test_other_roles_cannot_manage_members(self, tenants, role):
        client = web_client(tenants.a.users[role])
        assert client.get(members_url(tenants.a)).status_code == 404
        assert create(client, tenants.a, "intruder@alpha", ["clinician"]).status_code == 404
        assert not User.objects.filter(username="intruder@alpha").exists()


class TestTheMembershipApi:
    def test_a_member_lists_their_own_memberships(self, tenants):
        rows = api_client(tenants.a.clinician).get("/api/v1/memberships/").json()["results"]
        assert [(r["username"], r["role"], r["institution"]) for r in rows] == [
            ("clinician@alpha", "clinician", str(tenants.a.institution.pk))
        ]

    def test_an_admin_lists_every_membership_of_their_institution(self, tenants):
        rows = api_client(tenants.a.institution_admin).get("/api/v1/memberships/").json()["results"]
        assert {r["username"] for r in rows} == {u.username for u in tenants.a.users.values()}

    def test_an_admin_creates_a_member_with_roles(self, tenants):
        client = api_client(tenants.a.institution_admin)
        response = client.post(
            f"/api/v1/institutions/{tenants.a.institution.pk}/members/",
            {"username": "nurse@alpha", "password": "a long enough passphrase", "roles": ["clinician"]},
            format="json",
        )
        assert response.status_code == 201, response.json()
        assert response.json()["roles"] == ["clinician"] and response.json()["is_active"]
        assert "password" not in response.json()
        listing = client.get(f"/api/v1/institutions/{tenants.a.institution.pk}/members/").json()["results"]
        assert "nurse@alpha" in {m["username"] for m in listing}

    def test_an_admin_adds_suspends_and_removes_a_role(self, tenants):
        client = api_client(tenants.a.institution_admin)
        added = client.post(
            "/api/v1/memberships/",
            {"institution": str(tenants.a.institution.pk), "username": "clinician@alpha", "role": "radiologist"},
        )
        assert added.status_code == 201, added.json()
        membership_id = added.json()["id"]
        suspended = client.patch(f"/api/v1/memberships/{membership_id}/", {"is_active": False})
        assert suspended.status_code == 200 and suspended.json()["is_active"] is False
        assert client.delete(f"/api/v1/memberships/{membership_id}/").status_code == 204
        assert roles_of(tenants.a.clinician, tenants.a) == {"clinician"}

    def test_an_admin_cannot_touch_another_institutions_memberships(self, tenants):
        client = api_client(tenants.a.institution_admin)
        victim = Membership.objects.get(user=tenants.b.clinician)
        assert client.get(f"/api/v1/memberships/{victim.pk}/").status_code == 404
        assert client.patch(f"/api/v1/memberships/{victim.pk}/", {"is_active": False}).status_code == 404
        assert client.delete(f"/api/v1/memberships/{victim.pk}/").status_code == 404
        given = client.post(
            "/api/v1/memberships/",
            {"institution": str(tenants.b.institution.pk), "username": "clinician@alpha", "role": "radiologist"},
        )
        assert given.status_code == 403
        created = client.post(
            f"/api/v1/institutions/{tenants.b.institution.pk}/members/",
            {"username": "intruder@bravo", "password": "a long enough passphrase", "roles": ["clinician"]},
            format="json",
        )
        assert created.status_code == 404
        victim.refresh_from_db()
        assert victim.is_active
        assert not Membership.objects.filter(user=tenants.a.clinician, institution=tenants.b.institution).exists()

    def test_a_member_cannot_change_their_own_roles(self, tenants):
        client = api_client(tenants.a.clinician)
        own = Membership.objects.get(user=tenants.a.clinician)
        assert client.patch(f"/api/v1/memberships/{own.pk}/", {"is_active": False}).status_code == 403
        assert client.delete(f"/api/v1/memberships/{own.pk}/").status_code == 403
        given = client.post(
            "/api/v1/memberships/",
            {"institution": str(tenants.a.institution.pk), "username": "clinician@alpha", "role": "radiologist"},
        )
        assert given.status_code == 403


class TestTheInstitutionApi:
    def test_members_see_only_their_institutions_with_their_roles(self, tenants):
        reader = tenants.b.radiologist
        Membership.objects.create(user=reader, institution=tenants.a.institution, role=Role.RADIOLOGIST)
        rows = api_client(reader).get("/api/v1/institutions/").json()["results"]
        assert {(r["slug"], tuple(r["my_roles"])) for r in rows} == {
            ("alpha", ("radiologist",)),
            ("bravo", ("radiologist",)),
        }
        assert api_client(reader).get(f"/api/v1/institutions/{tenants.c.institution.pk}/").status_code == 404

    def test_a_platform_administrator_sees_every_institution(self, tenants, platform_admin):
        rows = api_client(platform_admin).get("/api/v1/institutions/").json()["results"]
        assert {r["slug"] for r in rows} == {"alpha", "bravo", "charlie"}

    def test_a_user_without_membership_sees_none(self, tenants):
        loner = make_user("loner")
        assert api_client(loner).get("/api/v1/institutions/").json()["results"] == []


class TestListsStayCheap:
    @pytest.fixture
    def crowd(self, tenants):
        for n in range(15):
            member = make_user(f"extra{n}@alpha")
            Membership.objects.create(user=member, institution=tenants.a.institution, role=Role.CLINICIAN)
            issue_token(tenants.a.institution_admin, name=f"t{n}")

    @pytest.mark.parametrize(
        "url",
        [
            "/api/v1/memberships/",
            "/api/v1/institutions/",
            "/api/v1/auth/tokens/",
            "/api/v1/institutions/{institution}/members/",
        ],
    )
    def test_the_number_of_queries_does_not_grow_with_the_rows(
        self, tenants, crowd, url, django_assert_max_num_queries
    ):
        client = api_client(tenants.a.institution_admin)
        url = url.format(institution=tenants.a.institution.pk)
        client.get(url)  # warm up (token last-used stamp)
        with django_assert_max_num_queries(8):
            response = client.get(url)
        assert response.status_code == 200

    def test_a_filter_that_is_not_a_uuid_is_a_clear_400(self, tenants):
        response = api_client(tenants.a.institution_admin).get("/api/v1/memberships/?institution=abc")
        assert response.status_code == 400
        assert response.json() == {"institution": "Not a UUID."}

    def test_the_members_page_stays_cheap(self, tenants, crowd, django_assert_max_num_queries):
        client = web_client(tenants.a.institution_admin)
        with django_assert_max_num_queries(12):
            assert client.get(members_url(tenants.a)).status_code == 200
