"""HTTP Basic on DICOMweb: a wrong password is one 401, one counted failure and one audit event.

Real HTTP against the running ASGI server, as an attacker (or a viewer with
a stale password) would send it.
"""

from __future__ import annotations

import base64

import requests
from axes.models import AccessAttempt

from pacs_cloud.models import AuditEvent
from tests.conftest import PASSWORD


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_a_wrong_basic_password_is_one_refusal_one_failure_and_one_audit_event(tenants, live_url, settings):
    url = f"{live_url}/dicomweb/studies"
    with requests.Session() as client:
        response = client.get(url, headers=basic("clinician@alpha", "wrong-password"), timeout=10)

        assert response.status_code == 401
        assert AccessAttempt.objects.get(username="clinician@alpha").failures_since_start == 1
        failed = AuditEvent.objects.filter(action="auth.login.failed")
        assert [(e.actor, e.outcome, e.client_address) for e in failed] == [("clinician@alpha", "denied", "127.0.0.1")]

        # Below the limit the right password still works; at the limit it is locked.
        for _ in range(settings.AXES_FAILURE_LIMIT - 2):
            assert client.get(url, headers=basic("clinician@alpha", "wrong-password"), timeout=10).status_code == 401
        assert client.get(url, headers=basic("clinician@alpha", PASSWORD), timeout=10).status_code == 200
        for _ in range(settings.AXES_FAILURE_LIMIT):
            client.get(url, headers=basic("clinician@alpha", "wrong-password"), timeout=10)
        locked = client.get(url, headers=basic("clinician@alpha", PASSWORD), timeout=10)
    assert locked.status_code == 429
    # Each wrong password once, and the attempt refused while locked.
    assert AuditEvent.objects.filter(action="auth.login.failed").count() == 2 * settings.AXES_FAILURE_LIMIT
    assert AuditEvent.objects.filter(action="auth.lockout").exists()
