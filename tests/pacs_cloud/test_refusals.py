"""A refused request: a page in the product's frame with a way home, JSON from the API, one log line and no traceback."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import api_client, web_client


def assert_logged_without_traceback(caplog) -> None:
    refusals = [r for r in caplog.records if getattr(r, "status_code", None) == 403]
    assert refusals, "the refusal is still logged"
    assert all(r.levelno < logging.ERROR for r in caplog.records)
    assert all(r.exc_info is None and not r.exc_text for r in caplog.records)


@pytest.mark.django_db
def test_a_page_for_another_role_answers_a_styled_403(tenants, caplog):
    caplog.set_level(logging.INFO)
    response = web_client(tenants.a.clinician).get("/worklist/register/")
    assert response.status_code == 403
    assert "pacs_cloud/403.html" in [t.name for t in response.templates]
    assert "pacs_cloud/base.html" in [t.name for t in response.templates]
    page = response.content.decode()
    assert "Switch to an institution where you hold this role." in page
    assert 'href="/"' in page and "Back to the home page" in page
    assert_logged_without_traceback(caplog)


@pytest.mark.django_db
def test_a_refusal_without_a_message_still_explains_itself(platform_admin, caplog):
    caplog.set_level(logging.INFO)
    response = web_client(platform_admin).get("/admin/pacs_cloud/auditevent/add/")
    assert response.status_code == 403
    assert "You do not have access to this page." in response.content.decode()
    assert_logged_without_traceback(caplog)


@pytest.mark.django_db
def test_a_form_without_its_security_token_answers_a_styled_403(tenants, caplog):
    caplog.set_level(logging.INFO)
    response = web_client(tenants.a.clinician, enforce_csrf=True).post("/institution/switch/", {})
    assert response.status_code == 403
    assert "pacs_cloud/403.html" in [t.name for t in response.templates]
    assert "Reload the page and try again." in response.content.decode()
    assert_logged_without_traceback(caplog)


@pytest.mark.django_db
def test_the_api_refuses_in_json(tenants, caplog):
    caplog.set_level(logging.INFO)
    response = api_client(tenants.a.clinician).post("/api/v1/orders/", {}, format="json")
    assert response.status_code == 403
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Only technologists register exams."}
    assert_logged_without_traceback(caplog)
