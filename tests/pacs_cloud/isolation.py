"""Isolation harness registrations of the platform: members, memberships, tokens, institutions."""

import secrets

from pacs_cloud.authentication import issue_token
from pacs_cloud.models import Membership, Role
from tests import isolation
from tests.conftest import make_user


@isolation.factory
def members_and_tokens(tenant):
    """A member known only to their institution, and an API token of its clinician."""
    token = secrets.token_hex(4)
    slug = tenant.institution.slug
    member = make_user(f"member-{token}@{slug}", display_name=f"Member Secret{token}")
    membership = Membership.objects.create(user=member, institution=tenant.institution, role=Role.CLINICIAN)
    api_token, _ = issue_token(tenant.clinician, name=f"token-secret-{token}")
    return isolation.Made(
        values={
            "member.uuid": member.uuid,
            "member.username": member.username,
            "membership.id": membership.pk,
            "token.id": api_token.pk,
        },
        secrets=[member.display_name, member.username, api_token.name],
    )


isolation.exempt("/admin/*", "Django admin: staff only; no tenant user is staff (test_tenant_users_never_reach_admin)")
isolation.exempt("/logout/", "ends the walking user's session; holds no data")

isolation.route(
    "/institution/switch/",
    bodies={"post": isolation.Form({"institution": isolation.Ref("institution.id")})},
)
isolation.route("/account/tokens/{token_id}/revoke/", token_id="token.id")
isolation.route(
    "/institutions/{institution_id}/members/",
    institution_id="institution.id",
    bodies={
        "post": isolation.Form(
            {"form": "add", "add-username": isolation.Ref("member.username"), "add-role": "radiologist"}
        )
    },
)
isolation.route(
    "/institutions/{institution_id}/members/{user_uuid}/",
    institution_id="institution.id",
    user_uuid="member.uuid",
    bodies={"post": isolation.Form({"roles": ["radiologist"]})},
)
isolation.route(
    "/institutions/{institution_id}/members/{user_uuid}/active/",
    institution_id="institution.id",
    user_uuid="member.uuid",
    bodies={"post": isolation.Form({"active": "0"})},
)
isolation.route(
    "/api/v1/institutions/{institution_id}/members/",
    institution_id="institution.id",
    bodies={"post": {"username": "intruder", "password": "a long enough passphrase", "roles": ["clinician"]}},
)
isolation.route("/api/v1/auth/tokens/{pk}/", pk="token.id")
isolation.route("/api/v1/institutions/{pk}/", pk="institution.id", open_to={"platform"})
isolation.route(
    "/api/v1/memberships/",
    queries=[{"institution": isolation.Ref("institution.id")}],
    bodies={
        "post": {
            "institution": isolation.Ref("institution.id"),
            "username": isolation.Ref("member.username"),
            "role": "radiologist",
        }
    },
)
isolation.route("/api/v1/memberships/{pk}/", pk="membership.id", bodies={"patch": {"is_active": False}})


@isolation.factory
def invitation(tenant):
    """An open invitation to the institution, whose invitee's name no other institution may see."""
    from pacs_cloud.actions import do_invite

    token = secrets.token_hex(4)
    row, _ = do_invite(
        tenant.institution,
        roles=[Role.TECHNOLOGIST],
        display_name=f"Invitee Secret{token}",
        email=f"invitee{token}@example.org",
        acting_user=tenant.institution_admin,
    )
    return isolation.Made(values={"invitation.id": row.pk}, secrets=[f"Secret{token}", f"invitee{token}@example.org"])


isolation.route(
    "/api/v1/invitations/",
    bodies={"post": {"institution": isolation.Ref("institution.id"), "roles": ["technologist"]}},
)
isolation.route("/api/v1/invitations/{pk}/", pk="invitation.id")
isolation.route(
    "/api/v1/invitation/accept/",
    bodies={"post": {"token": "not-a-token", "username": "intruder", "password": "a long enough passphrase"}},
)
