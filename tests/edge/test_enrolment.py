"""Cloud side: an institution admin enrols an edge, its token (once, rotatable, revocable), heartbeat, health."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework.test import APIClient

from archive.edge import enrolment
from archive.models import EdgeGateway
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, web_client
from tests.samples import store_sample_study


def edge_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def enrol(tenants, name: str = "Basement") -> tuple[dict, str]:
    answer = api_client(tenants.a.institution_admin).post("/api/v1/edges/", {"name": name}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()["edge"], answer.json()["token"]


HEARTBEAT = {
    "version": "1.0",
    "outbox_depth": 12,
    "oldest_unsent_seconds": 42.5,
    "disk_free_bytes": 10_000_000,
    "online_bytes": 2_000,
    "quarantined": 0,
    "last_sync_at": "2026-01-01T10:00:00+00:00",
}


def test_an_admin_enrols_an_edge_and_gets_its_token_once(tenants):
    edge, token = enrol(tenants)
    assert len(token) > 30
    admin = api_client(tenants.a.institution_admin)
    listed = admin.get("/api/v1/edges/").json()["results"]
    assert [e["name"] for e in listed] == ["Basement"]
    assert token not in str(listed) and token not in str(admin.get(f"/api/v1/edges/{edge['id']}/").json())
    assert AuditEvent.objects.filter(action="archive.edge.enrolled", object_id=edge["id"]).exists()
    # The token acts as the edge, for its heartbeat.
    assert edge_client(token).post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json").status_code == 200


def test_only_an_institution_admin_enrols(tenants):
    answer = api_client(tenants.a.technologist).post("/api/v1/edges/", {"name": "Mine"}, format="json")
    assert answer.status_code == 403
    assert not EdgeGateway.objects.exists()


def test_a_rotated_token_replaces_the_old_one_at_once(tenants):
    edge, old = enrol(tenants)
    answer = api_client(tenants.a.institution_admin).post(f"/api/v1/edges/{edge['id']}/rotate/")
    new = answer.json()["token"]
    assert new != old
    assert edge_client(old).post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json").status_code == 401
    assert edge_client(new).post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json").status_code == 200


def test_a_revoked_edge_can_do_nothing(tenants, storage_dir):
    edge, token = enrol(tenants)
    api_client(tenants.a.institution_admin).post(f"/api/v1/edges/{edge['id']}/revoke/")
    client = edge_client(token)
    assert client.post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json").status_code == 401
    assert client.get("/dicomweb/studies").status_code == 401
    rotate = api_client(tenants.a.institution_admin).post(f"/api/v1/edges/{edge['id']}/rotate/")
    assert rotate.status_code == 400


def test_a_user_that_is_not_an_edge_cannot_report_as_one(tenants):
    enrol(tenants)
    answer = api_client(tenants.a.institution_admin).post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json")
    assert answer.status_code == 403


def test_the_heartbeat_is_kept_and_shown(tenants):
    edge, token = enrol(tenants)
    edge_client(token).post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json")
    row = EdgeGateway.objects.get(pk=edge["id"])
    assert (row.version, row.outbox_depth, row.oldest_unsent_seconds, row.disk_free_bytes) == (
        "1.0",
        12,
        42.5,
        10_000_000,
    )
    assert row.last_sync_at == dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    assert enrolment.health(row)["state"] == "ok"
    page = web_client(tenants.a.institution_admin).get("/archive/edges/").content.decode()
    assert "Basement" in page and "attention" not in page


def test_an_old_backlog_raises_an_alert(tenants, settings):
    settings.EDGE_BACKLOG_ALERT_MINUTES = 10
    edge, token = enrol(tenants)
    edge_client(token).post(
        "/api/v1/edge/heartbeat/", {**HEARTBEAT, "outbox_depth": 300, "oldest_unsent_seconds": 3600}, format="json"
    )
    row = EdgeGateway.objects.get(pk=edge["id"])
    assert enrolment.health(row)["state"] == "backlog"
    page = web_client(tenants.a.institution_admin).get("/archive/edges/").content.decode()
    assert "1 edge gateway needs attention" in page
    assert "300 images waiting, the oldest for 60 min" in page


def test_an_edge_that_stops_reporting_raises_an_alert(tenants, settings):
    settings.EDGE_BACKLOG_ALERT_MINUTES = 10
    edge, token = enrol(tenants)
    edge_client(token).post("/api/v1/edge/heartbeat/", HEARTBEAT, format="json")
    EdgeGateway.objects.filter(pk=edge["id"]).update(last_seen_at=timezone.now() - dt.timedelta(minutes=30))
    assert enrolment.health(EdgeGateway.objects.get(pk=edge["id"]))["state"] == "silent"


def test_quarantined_instances_are_visible_to_the_admin(tenants):
    edge, token = enrol(tenants)
    item = {"sop_instance_uid": "1.2.3.4", "study_instance_uid": "1.2.3", "sha256": "a" * 64, "reason": "bad UID"}
    client = edge_client(token)
    assert client.post("/api/v1/edge/quarantine/", {"items": [item]}, format="json").json() == {"recorded": 1}
    assert client.post("/api/v1/edge/quarantine/", {"items": [item]}, format="json").json() == {"recorded": 0}
    page = web_client(tenants.a.institution_admin).get(f"/archive/edges/{edge['id']}/").content.decode()
    assert "1.2.3.4" in page and "bad UID" in page
    listed = api_client(tenants.a.institution_admin).get(f"/api/v1/edges/{edge['id']}/quarantine/").json()
    assert [q["reason"] for q in listed] == ["bad UID"]


def test_the_enrolment_page_shows_the_token_once_and_rotates_it(tenants):
    client = web_client(tenants.a.institution_admin)
    page = client.post("/archive/edges/", {"name": "Radiology closet"}).content.decode()
    edge = EdgeGateway.objects.get(name="Radiology closet")
    assert 'id="token-value"' in page
    assert 'id="token-value"' not in client.get("/archive/edges/").content.decode()
    rotated = client.post(f"/archive/edges/{edge.pk}/", {"action": "rotate"}).content.decode()
    assert 'id="token-value"' in rotated
    client.post(f"/archive/edges/{edge.pk}/", {"action": "revoke"})
    edge.refresh_from_db()
    assert edge.revoked_at is not None and not edge.user.is_active


def test_the_cloud_confirms_the_sha256_of_what_it_holds(tenants, storage_dir):
    _, token = enrol(tenants)
    ours = store_sample_study(tenants.a.institution, patient_name="A^B", patient_id="P1", accession="A1")
    theirs = store_sample_study(tenants.b.institution, patient_name="C^D", patient_id="P2", accession="A2")
    uids = [ours.instance.sop_instance_uid, theirs.instance.sop_instance_uid, "1.2.3"]
    answer = edge_client(token).post("/api/v1/edge/confirm/", {"sop_instance_uids": uids}, format="json")
    assert answer.json() == {"confirmed": {ours.instance.sop_instance_uid: ours.instance.sha256}}


def test_the_demo_enrols_riversides_edge_once_and_keeps_its_token_for_the_procfile(db, settings, tmp_path):
    from archive.edge import demo
    from pacs_cloud import demo as platform_demo
    from pacs_cloud.authentication import user_for_token

    settings.DATA_DIR = tmp_path
    platform_demo.seed()
    first = demo.seed()
    token = demo.token_file().read_text()
    assert demo.seed() == first
    assert demo.token_file().read_text() == token
    user, _ = user_for_token(token)
    assert user.edge_gateway.institution.slug == "riverside"
    assert oct(demo.token_file().stat().st_mode & 0o777) == "0o600"
    # A lost token file gets a new token; the old one stops working.
    demo.token_file().unlink()
    demo.seed()
    assert demo.token_file().read_text() != token
    assert EdgeGateway.objects.count() == 1


def test_the_admins_home_page_shows_an_edge_in_trouble(tenants, settings):
    settings.EDGE_BACKLOG_ALERT_MINUTES = 10
    edge, token = enrol(tenants, name="Closet")
    page = web_client(tenants.a.institution_admin).get("/").content.decode()
    assert "Closet: never seen" in page and "need" not in page
    edge_client(token).post(
        "/api/v1/edge/heartbeat/", {**HEARTBEAT, "outbox_depth": 40, "oldest_unsent_seconds": 7200}, format="json"
    )
    page = web_client(tenants.a.institution_admin).get("/").content.decode()
    assert "1 edge gateway needs attention" in page and "40 images waiting, the oldest for 120 min" in page
    # Other roles and other institutions' admins see no such panel.
    assert "Closet" not in web_client(tenants.a.technologist).get("/").content.decode()
    assert "Closet" not in web_client(tenants.b.institution_admin).get("/").content.decode()
