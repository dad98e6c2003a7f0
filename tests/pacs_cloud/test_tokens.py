"""Bearer tokens: issue, list, revoke; expired and revoked tokens get 401."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from pacs_cloud.authentication import issue_token
from pacs_cloud.models import ApiToken, AuditEvent
from tests.conftest import PASSWORD, api_client, web_client


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def test_the_token_endpoint_issues_a_working_token(tenants):
    response = APIClient().post(
        "/api/v1/auth/token/", {"username": "radiologist@alpha", "password": PASSWORD, "name": "workstation"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "workstation" and body["is_usable"]
    assert bearer(body["token"]).get("/api/v1/institutions/").status_code == 200
    stored = ApiToken.objects.get(pk=body["id"])
    assert stored.key_hash == ApiToken.hash_key(body["token"])  # only the hash is kept
    assert body["token"] not in str(stored.__dict__)
    assert AuditEvent.objects.filter(action="auth.token.issued", actor="radiologist@alpha").exists()


def test_a_wrong_password_gets_401_and_no_token(tenants):
    response = APIClient().post("/api/v1/auth/token/", {"username": "radiologist@alpha", "password": "wrong-one"})
    assert response.status_code == 401
    assert not ApiToken.objects.exists()
    failed = AuditEvent.objects.get(action="auth.login.failed")
    assert failed.actor == "radiologist@alpha" and failed.outcome == "denied" and failed.detail["via"] == "api"


def test_a_token_lifetime_is_capped(tenants, settings):
    settings.API_TOKEN_MAX_TTL_HOURS = 48
    response = APIClient().post(
        "/api/v1/auth/token/", {"username": "radiologist@alpha", "password": PASSWORD, "ttl_hours": 49}
    )
    assert response.status_code == 400
    assert "ttl_hours" in response.json()


def test_an_expired_token_gets_401(tenants):
    token, key = issue_token(tenants.a.radiologist)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(key).get("/api/v1/institutions/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Token expired."
    assert response["WWW-Authenticate"] == "Bearer"


def test_a_revoked_token_gets_401(tenants):
    _, key = issue_token(tenants.a.radiologist)
    client = bearer(key)
    token_id = client.get("/api/v1/auth/tokens/").json()["results"][0]["id"]
    assert client.delete(f"/api/v1/auth/tokens/{token_id}/").status_code == 204
    response = client.get("/api/v1/institutions/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Token revoked."
    assert AuditEvent.objects.filter(action="auth.token.revoked", object_id=token_id).exists()


def test_an_unknown_or_malformed_token_gets_401(tenants):
    assert bearer("not-a-token").get("/api/v1/institutions/").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer two parts")
    assert client.get("/api/v1/institutions/").status_code == 401


def test_a_deactivated_users_token_gets_401(tenants):
    user = tenants.a.clinician
    _, key = issue_token(user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert bearer(key).get("/api/v1/institutions/").status_code == 401


def test_users_list_and_revoke_only_their_own_tokens(tenants):
    mine, _ = issue_token(tenants.a.radiologist, name="mine")
    colleague, _ = issue_token(tenants.a.clinician, name="colleagues")
    client = api_client(tenants.a.radiologist)  # holds one more token, named "test"
    names = {row["name"] for row in client.get("/api/v1/auth/tokens/").json()["results"]}
    assert names == {"mine", "test"}
    assert client.get(f"/api/v1/auth/tokens/{colleague.pk}/").status_code == 404
    assert client.delete(f"/api/v1/auth/tokens/{colleague.pk}/").status_code == 404
    colleague.refresh_from_db()
    assert colleague.revoked_at is None
    assert client.get(f"/api/v1/auth/tokens/{mine.pk}/").json()["prefix"] == mine.prefix


def test_a_signed_in_user_creates_another_token_through_the_api(tenants):
    client = api_client(tenants.a.radiologist)
    response = client.post("/api/v1/auth/tokens/", {"name": "edge", "ttl_hours": 24})
    assert response.status_code == 201
    assert bearer(response.json()["token"]).get("/api/v1/auth/tokens/").status_code == 200


def test_the_tokens_page_creates_shows_once_and_revokes(tenants):
    client = web_client(tenants.a.technologist)
    response = client.post("/account/tokens/", {"name": "modality bridge", "days": 7})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    key = response.context["new_key"]
    assert key and key in response.content.decode()
    token = ApiToken.objects.get(name="modality bridge")
    assert token.user == tenants.a.technologist
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)
    listing = client.get("/account/tokens/").content.decode()
    assert "modality bridge" in listing and key not in listing
    client.post(f"/account/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert bearer(key).get("/api/v1/auth/tokens/").status_code == 401


def test_nobody_revokes_another_users_token_on_the_page(tenants):
    token, _ = issue_token(tenants.b.radiologist)
    response = web_client(tenants.a.institution_admin).post(f"/account/tokens/{token.pk}/revoke/")
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


@pytest.mark.parametrize("days", [0, 100000])
def test_the_tokens_page_refuses_a_bad_lifetime(tenants, days):
    response = web_client(tenants.a.technologist).post("/account/tokens/", {"name": "x", "days": days})
    assert response.context["new_key"] is None
    assert not ApiToken.objects.exists()
