"""Signing in: audit events, lockout after repeated failures (page and API), CSRF, Argon2."""

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.hashers import identify_hasher
from rest_framework.test import APIClient

from pacs_cloud.models import AuditEvent
from tests.conftest import PASSWORD, browser_login, web_client


def sign_in(client, username, password, address="10.1.1.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def get_token(username, password, address="10.1.1.1"):
    return APIClient().post("/api/v1/auth/token/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_sign_in_and_out_are_audited(tenants):
    client = web_client()
    response = sign_in(client, "clinician@alpha", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"
    client.post("/logout/")
    login, logout = AuditEvent.objects.filter(action__in=["auth.login", "auth.logout"]).order_by("id")
    assert (login.action, login.actor, login.client_address) == ("auth.login", "clinician@alpha", "10.1.1.1")
    assert (logout.action, logout.actor) == ("auth.logout", "clinician@alpha")


def test_a_failed_sign_in_is_audited_without_the_password(tenants):
    response = sign_in(web_client(), "clinician@alpha", "not-the-password")
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    event = AuditEvent.objects.get(action="auth.login.failed")
    assert (event.actor, event.outcome, event.detail["via"]) == ("clinician@alpha", "denied", "web")
    assert "not-the-password" not in str(event.detail)


def test_the_sign_in_page_locks_after_repeated_failures(tenants, settings):
    client = web_client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "clinician@alpha", "wrong-password").status_code == 200
    locked = sign_in(client, "clinician@alpha", "wrong-password")
    assert locked.status_code == 429
    assert "Too many failed sign-in attempts" in locked.content.decode()
    assert int(locked["Retry-After"]) > 0
    # The right password does not help while locked.
    assert sign_in(client, "clinician@alpha", PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session
    lockout = AuditEvent.objects.filter(action="auth.lockout").first()
    assert lockout is not None and lockout.actor == "clinician@alpha" and lockout.client_address == "10.1.1.1"


def test_a_lockout_holds_one_username_from_one_address(tenants, settings):
    client = web_client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "clinician@alpha", "wrong-password")
    # Colleagues behind the same address, and the user from elsewhere, still sign in.
    assert sign_in(web_client(), "radiologist@alpha", PASSWORD).status_code == 302
    assert sign_in(web_client(), "clinician@alpha", PASSWORD, address="10.2.2.2").status_code == 302


def test_the_lockout_ends_after_the_cool_off(tenants, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(web_client(), "clinician@alpha", "wrong-password")
    assert sign_in(web_client(), "clinician@alpha", PASSWORD).status_code == 429
    from datetime import timedelta

    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(hours=1))
    assert sign_in(web_client(), "clinician@alpha", PASSWORD).status_code == 302


def test_a_success_resets_the_failure_count(tenants, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(web_client(), "clinician@alpha", "wrong-password")
    assert sign_in(web_client(), "clinician@alpha", PASSWORD).status_code == 302
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(web_client(), "clinician@alpha", "wrong-password")
    assert sign_in(web_client(), "clinician@alpha", PASSWORD).status_code == 302


def test_the_token_endpoint_locks_after_repeated_failures(tenants, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert get_token("radiologist@alpha", "wrong-password").status_code == 401
    locked = get_token("radiologist@alpha", "wrong-password")
    assert locked.status_code == 429
    assert "Too many failed sign-in attempts" in locked.json()["detail"]
    right = get_token("radiologist@alpha", PASSWORD)
    assert right.status_code == 429 and "token" not in right.json()
    assert AuditEvent.objects.filter(action="auth.lockout", actor="radiologist@alpha").exists()
    # The browser sign-in is locked for the same account and address as well.
    assert sign_in(web_client(), "radiologist@alpha", PASSWORD).status_code == 429


def test_the_sign_in_form_needs_its_csrf_token(tenants):
    client = web_client(enforce_csrf=True)
    assert sign_in(client, "clinician@alpha", PASSWORD).status_code == 403
    page = client.get("/login/")
    token = page.cookies["csrftoken"].value
    response = client.post(
        "/login/", {"username": "clinician@alpha", "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302


def test_session_requests_that_change_things_need_csrf(tenants):
    client = web_client(tenants.a.clinician, enforce_csrf=True)
    assert client.post("/account/tokens/", {"name": "x", "days": 1}).status_code == 403
    # The API accepts a session too, and then also insists on CSRF.
    assert client.post("/api/v1/auth/tokens/", {"name": "x"}).status_code == 403
    assert client.get("/api/v1/auth/tokens/").status_code == 200


def test_passwords_are_stored_with_argon2(tenants):
    response = web_client(tenants.a.institution_admin).post(
        f"/institutions/{tenants.a.institution.pk}/members/",
        {
            "form": "create",
            "new-username": "nurse@alpha",
            "new-password": "a long enough passphrase",
            "new-roles": ["clinician"],
        },
    )
    assert response.status_code == 302
    from pacs_cloud.models import User

    assert identify_hasher(User.objects.get(username="nurse@alpha").password).algorithm == "argon2"


@pytest.mark.browser
def test_a_locked_out_user_sees_why_in_the_browser(tenants, live_url, browser_context, settings):
    context = browser_context()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        page = browser_login(context, live_url, "technologist@alpha", "wrong-password")
        assert "didn't match" in page.inner_text("main")
        page.close()
    page = browser_login(context, live_url, "technologist@alpha", "wrong-password")
    assert "Account locked" in page.inner_text("h1")
    assert "Too many failed sign-in attempts" in page.inner_text("main")
