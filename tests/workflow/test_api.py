"""The REST API: reading tasks with claim/release, least privilege, pools, agreements, policies."""

from __future__ import annotations

from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, make_user
from tests.workflow.conftest import make_study, save_policy
from workflow.actions import do_start_reading_process
from workflow.models import PoolMember, RoutingPolicy


def pool_policy(pool) -> dict:
    return {"rules": [{"name": "Pool", "offer_to": [{"kind": "own"}, {"kind": "pool", "pool": str(pool.pk)}]}]}


def offered_task(tenants, centre, **kw):
    save_policy(tenants.a.institution, pool_policy(centre.pool))
    study = make_study(tenants.a.institution, patient_name="SECRET^PATIENT", **kw)
    return do_start_reading_process(study).tasks.get()


def test_a_foreign_radiologist_sees_an_offer_without_patient_identity_until_the_claim(tenants, centre):
    task = offered_task(tenants, centre)
    client = api_client(centre.readers[0])
    listing = client.get("/api/v1/reading-tasks/")
    assert listing.status_code == 200
    [row] = listing.json()["results"]
    assert row["id"] == str(task.pk)
    assert row["hospital"]["name"] == "Alpha County Hospital"
    assert (row["modality"], row["body_part"], row["priority"]) == ("CT", "HEAD", "routine")
    assert row["sla_remaining_seconds"] > 0
    assert row["patient"] is None and row["study"] is None
    detail = client.get(f"/api/v1/reading-tasks/{task.pk}/")
    assert "SECRET" not in detail.content.decode()
    assert client.get(f"/workflow/tasks/{task.pk}/").status_code == 302  # pages need a session
    claimed = client.post(f"/api/v1/reading-tasks/{task.pk}/claim/")
    assert claimed.status_code == 200, claimed.content
    assert claimed.json()["patient"]["name"] == "SECRET^PATIENT"
    assert claimed.json()["state"] == "claimed"
    opened = client.get(f"/api/v1/reading-tasks/{task.pk}/")
    assert opened.json()["patient"]["patient_id"]
    assert AuditEvent.objects.filter(action="workflow.readingtask.view", actor=centre.readers[0].username).exists()


def test_own_radiologists_see_the_patient_of_their_hospital(tenants, centre):
    task = offered_task(tenants, centre)
    row = api_client(tenants.a.radiologist).get("/api/v1/reading-tasks/").json()["results"][0]
    assert row["id"] == str(task.pk) and row["patient"]["name"] == "SECRET^PATIENT"
    event = AuditEvent.objects.filter(action="workflow.worklist.view").last()
    assert event.actor == "radiologist@alpha" and event.detail == {"tasks": [str(task.pk)]}
    # A foreign reader's list shows no identity, so it reads no PHI.
    api_client(centre.readers[0]).get("/api/v1/reading-tasks/")
    assert AuditEvent.objects.filter(action="workflow.worklist.view").count() == 1


def test_a_claim_someone_else_won_answers_409_and_release_reopens(tenants, centre):
    task = offered_task(tenants, centre)
    first, second = (api_client(u) for u in centre.readers[:2])
    assert first.post(f"/api/v1/reading-tasks/{task.pk}/claim/").status_code == 200
    lost = second.post(f"/api/v1/reading-tasks/{task.pk}/claim/")
    assert lost.status_code == 409 and lost.json()["code"] == "not_open"
    assert second.get("/api/v1/reading-tasks/").json()["count"] == 0
    assert second.post(f"/api/v1/reading-tasks/{task.pk}/release/").status_code in (404, 409)
    mine = first.get("/api/v1/reading-tasks/?view=claimed").json()
    assert [r["id"] for r in mine["results"]] == [str(task.pk)]
    released = first.post(f"/api/v1/reading-tasks/{task.pk}/release/", {"reason": "end of shift"}, format="json")
    assert released.status_code == 200 and released.json()["state"] == "released"
    assert released.json()["patient"] is None
    assert second.get("/api/v1/reading-tasks/").json()["count"] == 1
    history = first.get(f"/api/v1/reading-tasks/{task.pk}/history/").json()
    assert [h["target"] for h in history] == ["offered", "claimed", "released"]
    assert history[-1]["reason"] == "end of shift"


def test_the_outsider_gets_404_everywhere(tenants, centre):
    task = offered_task(tenants, centre)
    outsider = api_client(tenants.c.radiologist)
    assert outsider.get("/api/v1/reading-tasks/").json()["count"] == 0
    for method, url in [
        ("get", f"/api/v1/reading-tasks/{task.pk}/"),
        ("post", f"/api/v1/reading-tasks/{task.pk}/claim/"),
        ("post", f"/api/v1/reading-tasks/{task.pk}/release/"),
        ("get", f"/api/v1/reading-tasks/{task.pk}/history/"),
        ("get", f"/api/v1/routing-policies/{RoutingPolicy.objects.get().pk}/"),
        ("get", f"/api/v1/pools/{centre.pool.pk}/"),
        ("get", "/api/v1/reading-tasks/not-a-uuid/"),
    ]:
        assert getattr(outsider, method)(url).status_code == 404, url


def test_filters_and_ordering(tenants, centre):
    save_policy(tenants.a.institution, pool_policy(centre.pool))
    save_policy(tenants.b.institution, pool_policy(centre.pool))
    for inst, modality in [(tenants.a.institution, "CT"), (tenants.a.institution, "MR"), (tenants.b.institution, "CT")]:
        do_start_reading_process(make_study(inst, modality=modality))
    client = api_client(centre.readers[0])
    assert client.get("/api/v1/reading-tasks/").json()["count"] == 3
    assert client.get("/api/v1/reading-tasks/?modality=mr").json()["count"] == 1
    assert client.get(f"/api/v1/reading-tasks/?hospital={tenants.b.institution.pk}").json()["count"] == 1
    assert client.get("/api/v1/reading-tasks/?priority=stat").json()["count"] == 0
    names = [r["hospital"]["name"] for r in client.get("/api/v1/reading-tasks/?ordering=-hospital").json()["results"]]
    assert names == sorted(names, reverse=True)
    for bad in ["ordering=colour", "view=everything", "hospital=nope"]:
        assert client.get(f"/api/v1/reading-tasks/?{bad}").status_code == 400, bad
    # A hospital the reader does not read for answers as an unknown one does.
    assert client.get(f"/api/v1/reading-tasks/?hospital={tenants.c.institution.pk}").status_code == 404
    assert client.get("/api/v1/reading-tasks/?hospital=00000000-0000-0000-0000-000000000000").status_code == 404


def test_the_reassign_action_is_for_the_hospitals_administrators(tenants, centre):
    task = offered_task(tenants, centre)
    url = f"/api/v1/reading-tasks/{task.pk}/reassign/"
    body = {"user": centre.readers[1].username, "reason": "subspecialty"}
    assert api_client(tenants.a.radiologist).post(url, body, format="json").status_code == 403
    done = api_client(tenants.a.institution_admin).post(url, body, format="json")
    assert done.status_code == 200 and done.json()["state"] == "reassigned"
    assert api_client(tenants.a.institution_admin).post(url, {"user": "nobody"}, format="json").status_code == 400


def test_policies_are_saved_as_versions_validated_and_dry_run(tenants, centre):
    admin = api_client(tenants.a.institution_admin)
    bad = admin.post(
        "/api/v1/routing-policies/",
        {"institution": str(tenants.a.institution.pk), "definition": {"rules": [{"offer_to": []}]}},
        format="json",
    )
    assert bad.status_code == 400
    assert "rules[0].name" in bad.json()["definition"]
    good = admin.post(
        "/api/v1/routing-policies/",
        {"institution": str(tenants.a.institution.pk), "definition": pool_policy(centre.pool), "note": "pool"},
        format="json",
    )
    assert good.status_code == 201 and good.json()["version"] == 1
    # Only the hospital's administrators; any other answers as a missing institution does.
    for client, institution in [(api_client(tenants.a.radiologist), tenants.a), (admin, tenants.b)]:
        body = {"institution": str(institution.institution.pk), "definition": {}}
        assert client.post("/api/v1/routing-policies/", body, format="json").status_code == 404
    pk = good.json()["id"]
    study = make_study(tenants.a.institution, modality="MR", body_part="KNEE")
    run = admin.post(
        f"/api/v1/routing-policies/{pk}/dry-run/", {"study": str(study.pk), "priority": "stat"}, format="json"
    )
    assert run.status_code == 200, run.content
    assert run.json()["matched"]["name"] == "Pool"
    assert run.json()["path"][0]["sla_minutes"] == 30  # the agreement's stat SLA
    assert run.json()["facts"]["modality"] == "MR"
    other = make_study(tenants.b.institution)
    assert (
        admin.post(f"/api/v1/routing-policies/{pk}/dry-run/", {"study": str(other.pk)}, format="json").status_code
        == 404
    )
    assert admin.post(f"/api/v1/routing-policies/{pk}/dry-run/", {}, format="json").status_code == 400
    draft = admin.post(
        "/api/v1/routing-policies/dry-run/",
        {
            "institution": str(tenants.a.institution.pk),
            "definition": {
                "rules": [{"name": "Knees", "when": {"body_parts": ["KNEE"]}, "offer_to": [{"kind": "own"}]}]
            },
            "facts": {"modality": "MR", "body_part": "knee"},
        },
        format="json",
    )
    assert draft.status_code == 200 and draft.json()["matched"]["name"] == "Knees"
    svg = admin.get(f"/api/v1/routing-policies/{pk}/diagram/")
    assert svg.status_code == 200 and svg["Content-Type"] == "image/svg+xml"
    assert b"Delta night pool" in svg.content and b"<svg" in svg.content


def test_pools_are_managed_by_their_owners_administrators(tenants, centre):
    from pacs_cloud.models import Membership, Role

    owner_admin = make_user("admin@delta")
    Membership.objects.create(user=owner_admin, institution=centre.institution, role=Role.INSTITUTION_ADMIN)
    admin = api_client(owner_admin)
    listed = admin.get("/api/v1/pools/").json()["results"]
    assert [p["name"] for p in listed] == ["Delta night pool"]
    assert len(listed[0]["members"]) == 3
    changed = admin.patch(f"/api/v1/pools/{centre.pool.pk}/", {"claim_cap": 8}, format="json")
    assert changed.status_code == 200 and changed.json()["claim_cap"] == 8
    assert (
        api_client(tenants.a.institution_admin)
        .patch(f"/api/v1/pools/{centre.pool.pk}/", {"claim_cap": 1}, format="json")
        .status_code
        == 403
    )
    member = PoolMember.objects.get(user=centre.readers[1])
    edited = admin.patch(
        f"/api/v1/pool-members/{member.pk}/",
        {"subspecialties": ["Neuro", "neuro", "MSK"], "claim_cap": 2},
        format="json",
    )
    assert edited.status_code == 200 and edited.json()["subspecialties"] == ["msk", "neuro"]
    refused = admin.post(
        "/api/v1/pool-members/",
        {"pool": str(centre.pool.pk), "user": "radiologist@charlie", "credentialed_for": []},
        format="json",
    )
    assert refused.status_code == 400  # not a radiologist of the pool's owner
    agreement = admin.post(
        "/api/v1/reading-agreements/",
        {
            "hospital": str(tenants.c.institution.pk),
            "pool": str(centre.pool.pk),
            "modalities": ["ct"],
            "sla_minutes": {"stat": 20},
        },
        format="json",
    )
    assert agreement.status_code == 201 and agreement.json()["modalities"] == ["CT"]
    bad_sla = admin.post(
        "/api/v1/reading-agreements/",
        {"hospital": str(tenants.c.institution.pk), "pool": str(centre.pool.pk), "sla_minutes": {"soon": 5}},
        format="json",
    )
    assert bad_sla.status_code == 400
    assert api_client(tenants.c.institution_admin).get("/api/v1/reading-agreements/").json()["count"] == 1


def test_the_schema_lists_every_workflow_route(tenants):
    schema = api_client(tenants.a.radiologist).get("/api/schema/?format=json").json()
    for path in [
        "/api/v1/reading-tasks/",
        "/api/v1/reading-tasks/{id}/claim/",
        "/api/v1/reading-tasks/{id}/release/",
        "/api/v1/reading-tasks/{id}/reassign/",
        "/api/v1/pools/",
        "/api/v1/pool-members/",
        "/api/v1/reading-agreements/",
        "/api/v1/routing-policies/",
        "/api/v1/routing-policies/{id}/dry-run/",
        "/api/v1/routing-policies/dry-run/",
    ]:
        assert path in schema["paths"], path
