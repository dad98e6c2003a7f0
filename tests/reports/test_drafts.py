"""Drafts never lose typing: every autosave is a revision, stale tabs are told, a closed tab recovers."""

from __future__ import annotations

from reports.models import DraftRevision, ReportTemplate
from tests.conftest import api_client


def _open(reading):
    client = api_client(reading.tenant.radiologist)
    body = client.post(
        "/api/v1/reports/", {"study": str(reading.study.pk), "template": str(reading.template.pk)}, format="json"
    ).json()
    return client, body


def test_every_autosave_is_kept_as_a_revision(reading):
    client, body = _open(reading)
    revision = body["draft_revision"]
    for text in ("Lungs", "Lungs are", "Lungs are clear."):
        response = client.put(
            f"/api/v1/reports/{body['id']}/draft/",
            {"content": {**body["draft"], "findings": text}, "base_revision": revision},
            format="json",
        )
        assert response.status_code == 200, response.content
        revision = response.json()["draft_revision"]
    kept = list(DraftRevision.objects.filter(report_id=body["id"]).values_list("content__findings", flat=True))
    assert kept == ["", "Lungs", "Lungs are", "Lungs are clear."]


def test_a_closed_tab_recovers_the_last_autosave(reading):
    client, body = _open(reading)
    client.put(
        f"/api/v1/reports/{body['id']}/draft/", {"content": {**body["draft"], "findings": "typed"}}, format="json"
    )
    # A new tab (a new session, even) opens the same draft with what was typed.
    recovered = api_client(reading.tenant.radiologist).get(f"/api/v1/reports/{body['id']}/draft/").json()
    assert recovered["draft"]["findings"] == "typed"
    assert recovered["draft_revision"] == 1


def test_a_stale_tab_is_refused_with_the_newer_draft(reading):
    client, body = _open(reading)
    first = client.put(
        f"/api/v1/reports/{body['id']}/draft/",
        {"content": {**body["draft"], "findings": "tab one"}, "base_revision": 0},
        format="json",
    )
    assert first.status_code == 200
    stale = client.put(
        f"/api/v1/reports/{body['id']}/draft/",
        {"content": {**body["draft"], "findings": "tab two"}, "base_revision": 0},
        format="json",
    )
    assert stale.status_code == 409
    assert stale.json()["code"] == "conflict"
    assert stale.json()["draft"]["findings"] == "tab one"


def test_the_draft_is_only_for_its_writers(reading):
    _, body = _open(reading)
    clinician = api_client(reading.tenant.clinician)
    assert clinician.get(f"/api/v1/reports/{body['id']}/").json()["draft"] is None
    assert clinician.get(f"/api/v1/reports/{body['id']}/draft/").status_code == 404
    refused = clinician.put(f"/api/v1/reports/{body['id']}/draft/", {"content": {"findings": "x"}}, format="json")
    assert refused.status_code == 403


def test_a_key_image_must_be_an_image_of_the_study(reading, tenants):
    client, body = _open(reading)
    other = client.put(
        f"/api/v1/reports/{body['id']}/draft/",
        {"content": {**body["draft"], "key_images": [{"instance": str(body["id"]), "frame": 1}]}},
        format="json",
    )
    assert other.status_code == 400
    ok = client.put(
        f"/api/v1/reports/{body['id']}/draft/",
        {"content": {**body["draft"], "key_images": [{"instance": str(reading.instance.pk), "frame": 1}]}},
        format="json",
    )
    assert ok.status_code == 200


def test_templates_offered_for_a_study_most_specific_first(reading):
    ReportTemplate.objects.create(institution=reading.study.institution, name="Any study", sections={})
    ReportTemplate.objects.create(institution=reading.study.institution, name="MR only", modality="MR", sections={})
    client = api_client(reading.tenant.radiologist)
    names = [t["name"] for t in client.get(f"/api/v1/report-templates/?study={reading.study.pk}").json()["results"]]
    assert set(names) == {"CT chest", "Any study"}
    created = client.post(
        "/api/v1/report-templates/",
        {
            "institution": str(reading.study.institution_id),
            "name": "CT head",
            "modality": "CT",
            "sections": {"technique": "Axial CT of the head."},
            "macros": [{"name": "Normal", "section": "findings", "text": "No acute intracranial finding."}],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["sections"] == {"technique": "Axial CT of the head.", "findings": "", "impression": ""}
    bad = client.post(
        "/api/v1/report-templates/",
        {"institution": str(reading.study.institution_id), "name": "Bad", "sections": {"history": "x"}},
        format="json",
    )
    assert bad.status_code == 400
    clinician = api_client(reading.tenant.clinician).post(
        "/api/v1/report-templates/",
        {"institution": str(reading.study.institution_id), "name": "Nope", "sections": {}},
        format="json",
    )
    assert clinician.status_code == 404
