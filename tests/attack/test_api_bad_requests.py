"""Every malformed REST request is refused with its reason (4xx), never answered 500.

Found by generated requests against the running product: numbers past the
database's integers in ``limit``/``offset``, JSON bodies that are not
objects, ids in URLs that are not UUIDs, and deleting a DICOM node a
modality station still uses.
"""

from __future__ import annotations

import json

import pytest
import requests

from archive.models import DicomNode
from tests.conftest import api_client
from worklist.models import Station

HUGE = str(2**63)
LISTS = [
    "/api/v1/dicom-nodes/",
    "/api/v1/stations/",
    "/api/v1/studies/",
    "/api/v1/orders/",
    "/api/v1/reading-tasks/",
    "/api/v1/referrals/",
    "/api/v1/ingest-conflicts/",
    "/api/v1/edges/",
    "/api/v1/reading-agreements/",
]
NOT_OBJECTS = ["null", "[null, null]", "7", '"x"']
BODIES = [
    "/api/v1/reading-agreements/",
    "/api/v1/routing-policies/",
    "/api/v1/routing-policies/dry-run/",
    "/api/v1/pool-members/",
]
NOT_A_UUID = "not-a-uuid"
ACTIONS_ON_IDS = [
    "/api/v1/edges/{id}/rotate/",
    "/api/v1/edges/{id}/revoke/",
    "/api/v1/edges/{id}/quarantine/",
    "/api/v1/ingest-conflicts/{id}/resolve/",
    "/api/v1/reading-tasks/{id}/claim/",
    "/api/v1/referrals/{id}/accept/",
]


@pytest.fixture
def clients(tenants):
    # Lists with rows: an empty one never reaches the database with the numbers.
    node = DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_CT", host="127.0.0.1")
    Station.objects.create(institution=tenants.a.institution, node=node, name="CT 1", modality="CT")
    return {"admin": api_client(tenants.a.institution_admin), "radiologist": api_client(tenants.a.radiologist)}


def test_a_page_past_any_integer_is_refused_or_capped(clients):
    for url in LISTS:
        for param in ("limit", "offset"):
            for client in clients.values():
                response = client.get(url, {param: HUGE})
                assert response.status_code < 500, (url, param, response.content)
                if response.status_code == 400:
                    assert param in response.json()
    assert clients["admin"].get("/api/v1/dicom-nodes/", {"limit": HUGE}).json()["results"]
    refused = clients["admin"].get("/api/v1/dicom-nodes/", {"offset": HUGE})
    assert refused.status_code == 400 and refused.json() == {"offset": "at most 1000000000"}


def test_a_json_body_that_is_not_an_object_is_refused(clients):
    for url in BODIES:
        for body in NOT_OBJECTS:
            response = clients["admin"].post(url, body, content_type="application/json")
            assert response.status_code == 400, (url, body, response.content)
            assert "must be a JSON object" in response.json()["detail"]


def test_an_id_that_is_not_a_uuid_names_nothing(clients):
    for url in ACTIONS_ON_IDS:
        for client in clients.values():
            for bad in (NOT_A_UUID, "-" * 36, "0" * 36):
                assert client.post(url.format(id=bad), {}, format="json").status_code == 404, (url, bad)


def test_a_dicom_node_a_station_still_uses_cannot_be_deleted(tenants, clients):
    node = DicomNode.objects.get(ae_title="ALPHA_CT")

    response = clients["admin"].delete(f"/api/v1/dicom-nodes/{node.pk}/")

    assert response.status_code == 409
    assert "station" in json.loads(response.content)["detail"]
    assert DicomNode.objects.filter(pk=node.pk).exists()


def test_a_nul_character_in_a_url_is_refused(clients, live_url):
    refused = clients["radiologist"].get("/api/v1/reports/verify-code/", {"code": "AB\x00CD"})
    assert refused.status_code == 400 and "NUL" in refused.json()["detail"]
    # The lean bearer-token paths of DICOMweb refuse it too.
    token = clients["radiologist"]._credentials["HTTP_AUTHORIZATION"]
    for path in ("/dicomweb/studies?PatientID=%00", "/dicomweb/studies/1.2%003/series/1.2/instances/1.2/rendered"):
        answer = requests.get(f"{live_url}{path}", headers={"Authorization": token}, timeout=10)
        assert answer.status_code == 400, (path, answer.status_code)
