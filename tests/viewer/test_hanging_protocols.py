"""Hanging protocols: per institution and per user, the first match applies, through ``/api/v1/hanging-protocols/``."""

from __future__ import annotations

from datetime import date

from pacs_cloud.models import AuditEvent
from tests.archive.test_priors import patient_at, study_of
from tests.conftest import api_client
from viewer.hanging.models import HangingProtocol

PANES = [{"study": "current"}, {"study": "prior", "prior": 0, "window": {"center": 40, "width": 80}}]


def protocol(client, **fields):
    body = {"name": "Head CT", "modality": "CT", "body_region": "HEAD", "layout": "1x2", "panes": PANES, **fields}
    return client.post("/api/v1/hanging-protocols/", body, format="json")


def test_users_keep_their_own_and_admins_their_institutions(tenants):
    mine = protocol(api_client(tenants.a.radiologist), name="我的头颅 CT")
    assert mine.status_code == 201, mine.content
    assert mine.json()["owner"] == "user" and mine.json()["institution"] is None
    hospital = protocol(api_client(tenants.a.institution_admin), institution=str(tenants.a.institution.pk))
    assert hospital.status_code == 201 and hospital.json()["owner"] == "institution"
    assert AuditEvent.objects.filter(action="viewer.hangingprotocol.create").count() == 2
    # The radiologist sees both; another hospital's radiologist neither.
    listed = {p["id"] for p in api_client(tenants.a.radiologist).get("/api/v1/hanging-protocols/").json()["results"]}
    assert listed == {mine.json()["id"], hospital.json()["id"]}
    assert api_client(tenants.b.radiologist).get("/api/v1/hanging-protocols/").json()["results"] == []
    assert (
        api_client(tenants.b.radiologist).delete(f"/api/v1/hanging-protocols/{mine.json()['id']}/").status_code == 404
    )
    # Only the institution's administrators change its protocols; nobody else makes one for it.
    radiologist = api_client(tenants.a.radiologist)
    url = f"/api/v1/hanging-protocols/{hospital.json()['id']}/"
    assert radiologist.patch(url, {"name": "x"}, format="json").status_code == 403
    assert protocol(radiologist, institution=str(tenants.a.institution.pk)).status_code == 400
    assert api_client(tenants.a.institution_admin).patch(url, {"min_priors": 1}, format="json").status_code == 200
    assert radiologist.delete(f"/api/v1/hanging-protocols/{mine.json()['id']}/").status_code == 204


def test_bad_protocols_are_refused(tenants):
    client = api_client(tenants.a.radiologist)
    for fields in (
        {"layout": "3x3"},
        {"panes": []},
        {"panes": [{"study": "other"}]},
        {"panes": [{"study": "prior", "prior": -1}]},
        {"panes": [{"study": "current", "window": {"center": 40}}]},
        {"panes": [{"study": "current", "zoom": 2}]},
        {"panes": [{"study": "current"}] * 3},  # three panes in 1x2
        {"body_region": "ELBOWS"},
    ):
        assert protocol(client, **fields).status_code == 400, fields
    assert not HangingProtocol.objects.exists()


def test_the_first_matching_protocol_applies_the_users_own_first(tenants):
    patient = patient_at(tenants.a.institution)
    study_of(patient, date(2025, 3, 14))
    current = study_of(patient, date(2026, 11, 2))
    reader, admin = api_client(tenants.a.radiologist), api_client(tenants.a.institution_admin)
    institution = str(tenants.a.institution.pk)

    def match(priors=1, client=reader):
        answer = client.get(f"/api/v1/hanging-protocols/match/?study={current.pk}&priors={priors}")
        assert answer.status_code == 200, answer.content
        found = answer.json()
        return found["protocol"]["name"] if found["protocol"] else None, found

    name, found = match()
    assert name is None
    assert (found["modality"], found["body_region"]) == ("CT", "HEAD")
    protocol(admin, institution=institution, name="MR only", modality="MR")
    protocol(admin, institution=institution, name="Two priors", min_priors=2, position=0)
    protocol(admin, institution=institution, name="Hospital head CT", position=1)
    assert match()[0] == "Hospital head CT"
    assert match(priors=2)[0] == "Two priors"
    protocol(reader, name="Mine", body_region="", position=9)
    assert match()[0] == "Mine"
    protocol(reader, name="Chest only", body_region="CHEST", position=0)
    assert match()[0] == "Mine"
    # A study the caller may not open has no protocol to tell.
    assert (
        api_client(tenants.b.radiologist).get(f"/api/v1/hanging-protocols/match/?study={current.pk}").status_code == 404
    )
    assert reader.get(f"/api/v1/hanging-protocols/match/?study={current.pk}&priors=x").status_code == 400
