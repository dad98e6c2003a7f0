"""The whole up-and-down flow through the REST API, with access checked on every way into a study."""

from __future__ import annotations

import pytest

from archive.models import Study
from pacs_cloud.models import AuditEvent, Membership, Role, Transition
from tests.conftest import api_client, make_user

from .access_probe import probe
from .conftest import archived_study


@pytest.fixture
def ct(tenants):
    return archived_study(tenants.a.institution, description="CT HEAD")


def post(user, path, body=None):
    return api_client(user).post(path, body or {}, format="json")


def test_up_and_down_flow_shares_on_send_and_revokes_on_close(tenants, ct):
    a, b, c = tenants.a, tenants.b, tenants.c
    created = post(
        a.referral_coordinator,
        "/api/v1/referrals/",
        {
            "to_institution": str(b.institution.pk),
            "studies": [str(ct.pk)],
            "reason": "Subdural haematoma: neurosurgery",
            "urgency": "urgent",
            "clinical_summary": "Fall, GCS 14",
        },
    )
    assert created.status_code == 201, created.content
    referral = created.json()
    url = f"/api/v1/referrals/{referral['id']}/"
    assert referral["state"] == "draft" and referral["patient"]["patient_id"] == ct.patient.patient_id
    assert referral["actions"] == ["consent", "attach", "detach", "cancel"]
    # A draft is the sender's alone; nothing is shared yet.
    assert api_client(b.referral_coordinator).get(url).status_code == 404
    assert probe(b.clinician, ct).nowhere

    refused = post(a.referral_coordinator, url + "send/")
    assert refused.status_code == 400 and "consent" in refused.json()["detail"]
    assert (
        post(a.referral_coordinator, url + "consent/", {"method": "written", "note": "signed form"}).status_code == 200
    )
    sent = post(a.referral_coordinator, url + "send/", {"reason": "bed confirmed by phone"})
    assert sent.status_code == 200 and sent.json()["state"] == "sent"
    assert sent.json()["response_due_at"] is not None

    # Sending shares the CT with the receiving clinicians (every way in), never with the outsider.
    assert probe(b.clinician, ct).everywhere
    assert probe(b.radiologist, ct).everywhere
    assert probe(c.clinician, ct).nowhere
    inbox = api_client(b.referral_coordinator).get("/api/v1/referrals/", {"box": "inbox"}).json()
    assert [r["id"] for r in inbox["results"]] == [referral["id"]]
    assert inbox["results"][0]["studies"][0]["shared"] is True
    assert api_client(c.referral_coordinator).get("/api/v1/referrals/").json()["count"] == 0
    assert api_client(c.referral_coordinator).get(url).status_code == 404

    # Only the receiving coordinator answers.
    assert post(a.referral_coordinator, url + "accept/").status_code == 403
    assert post(b.clinician, url + "accept/").status_code == 403
    assert post(c.referral_coordinator, url + "accept/").status_code == 404
    assert post(b.referral_coordinator, url + "accept/", {"reason": "neurosurgery bed 4"}).json()["state"] == "accepted"
    assert probe(b.clinician, ct).everywhere
    assert post(b.referral_coordinator, url + "admit/").json()["state"] == "in_care"
    message = post(b.clinician, url + "messages/", {"body": "Evacuated; doing well."})
    assert message.status_code == 201
    assert post(b.referral_coordinator, url + "return/", {"discharge_summary": "x"}).status_code == 400
    returned = post(
        b.referral_coordinator,
        url + "return/",
        {"discharge_summary": "Burr-hole evacuation, recovered", "follow_up_plan": "CT head in 6 weeks at Riverside"},
    )
    assert returned.json()["state"] == "returned"
    assert returned.json()["follow_up_plan"] == "CT head in 6 weeks at Riverside"
    assert probe(b.clinician, ct).everywhere  # kept until the sender closes
    assert post(b.referral_coordinator, url + "close/").status_code == 403
    closed = post(a.referral_coordinator, url + "close/", {"reason": "patient back home"})
    assert closed.json()["state"] == "closed"

    # Closed: gone for the receiving institution, 404 on every way in; the sender still sees it.
    after = probe(b.clinician, ct)
    assert after.nowhere and after.rest == after.metadata == after.viewer == 404, after
    assert probe(b.radiologist, ct).nowhere
    assert probe(a.clinician, ct).everywhere
    detail = api_client(b.referral_coordinator).get(url).json()
    assert detail["studies"][0]["shared"] is False and detail["studies"][0]["study_instance_uid"] is None

    timeline = api_client(a.referral_coordinator).get(url + "timeline/").json()
    steps = [(e["source"], e["target"]) for e in timeline if e["kind"] == "transition"]
    assert steps == [
        ("", "draft"),
        ("draft", "sent"),
        ("sent", "accepted"),
        ("accepted", "in_care"),
        ("in_care", "returned"),
        ("returned", "closed"),
    ]
    assert any(e["kind"] == "message" and e["text"] == "Evacuated; doing well." for e in timeline)
    rows = {t.target: t for t in Transition.objects.filter(object_id=referral["id"])}
    assert rows["sent"].actor == a.referral_coordinator and rows["sent"].reason == "bed confirmed by phone"
    assert rows["accepted"].actor == b.referral_coordinator and rows["accepted"].institution == b.institution
    assert rows["closed"].reason == "patient back home"

    actions = set(AuditEvent.objects.filter(object_id=str(ct.pk)).values_list("action", flat=True))
    assert {"sharing.grant", "sharing.revoke", "archive.study.metadata", "study.view"} <= actions
    grant = AuditEvent.objects.get(action="sharing.grant", object_id=str(ct.pk))
    assert grant.detail["to_institution"] == str(b.institution.pk) and grant.patient_id == ct.patient.patient_id
    consent = AuditEvent.objects.get(action="workflow.referral.consent")
    assert consent.detail["method"] == "written"


def test_declining_and_cancelling_end_the_share(tenants, ct):
    from .conftest import sent

    a, b = tenants.a, tenants.b
    declined = sent(tenants, ct)
    assert probe(b.clinician, ct).everywhere
    assert post(b.referral_coordinator, f"/api/v1/referrals/{declined.pk}/decline/").status_code == 400
    answer = post(b.referral_coordinator, f"/api/v1/referrals/{declined.pk}/decline/", {"reason": "no ICU bed"})
    assert answer.json()["state"] == "declined" and answer.json()["decline_reason"] == "no ICU bed"
    assert probe(b.clinician, ct).nowhere
    # The receiver that never took the patient sees that the referral ended, not whom it was about.
    seen = api_client(b.referral_coordinator).get(f"/api/v1/referrals/{declined.pk}/").json()
    assert seen["patient"] is None and seen["clinical_summary"] is None
    assert api_client(a.referral_coordinator).get(f"/api/v1/referrals/{declined.pk}/").json()["patient"] is not None

    cancelled = sent(tenants, ct)
    assert probe(b.clinician, ct).everywhere
    answer = post(a.referral_coordinator, f"/api/v1/referrals/{cancelled.pk}/cancel/", {"reason": "patient improved"})
    assert answer.json()["state"] == "cancelled"
    assert probe(b.clinician, ct).nowhere
    assert post(a.referral_coordinator, f"/api/v1/referrals/{cancelled.pk}/send/").status_code == 409


def test_a_study_shared_twice_stays_visible_until_the_last_share_ends(tenants, ct):
    from .conftest import sent

    a, b = tenants.a, tenants.b
    first, second = sent(tenants, ct), sent(tenants, ct)
    post(a.referral_coordinator, f"/api/v1/referrals/{first.pk}/cancel/", {"reason": "duplicate"})
    assert probe(b.clinician, ct).everywhere
    post(a.referral_coordinator, f"/api/v1/referrals/{second.pk}/cancel/", {"reason": "done"})
    assert probe(b.clinician, ct).nowhere


def test_the_grant_follows_institution_membership(tenants, ct):
    from .conftest import sent

    b = tenants.b
    sent(tenants, ct)
    newcomer = make_user("newdoc@bravo")
    membership = Membership.objects.create(user=newcomer, institution=b.institution, role=Role.CLINICIAN)
    assert probe(newcomer, ct).everywhere
    membership.is_active = False
    membership.save()
    assert probe(newcomer, ct).nowhere
    # A technologist of the receiving institution is not among those it is shared with.
    assert probe(b.technologist, ct).nowhere


def test_only_the_patients_visible_studies_can_be_attached(tenants, ct):
    a, b = tenants.a, tenants.b
    other_patient = archived_study(a.institution)
    same_patient = archived_study(a.institution, patient_id=ct.patient.patient_id, patient_name=ct.patient.name)
    foreign = archived_study(b.institution)
    referral = post(
        a.referral_coordinator,
        "/api/v1/referrals/",
        {"to_institution": str(b.institution.pk), "studies": [str(ct.pk)], "reason": "opinion"},
    ).json()
    url = f"/api/v1/referrals/{referral['id']}/"
    assert post(a.referral_coordinator, url + "attach/", {"study": str(other_patient.pk)}).status_code == 400
    assert post(a.referral_coordinator, url + "attach/", {"study": str(foreign.pk)}).status_code == 404
    assert post(b.referral_coordinator, url + "attach/", {"study": str(foreign.pk)}).status_code == 404
    assert post(a.clinician, url + "attach/", {"study": str(same_patient.pk)}).status_code == 403
    attached = post(a.referral_coordinator, url + "attach/", {"study": str(same_patient.pk)})
    assert attached.status_code == 200 and len(attached.json()["studies"]) == 2
    assert post(a.referral_coordinator, url + "attach/", {"study": str(same_patient.pk)}).status_code == 400
    assert post(a.referral_coordinator, url + "detach/", {"study": str(same_patient.pk)}).status_code == 200
    # Creating with another institution's study or patient is refused alike.
    refused = post(
        a.referral_coordinator,
        "/api/v1/referrals/",
        {"to_institution": str(b.institution.pk), "studies": [str(foreign.pk)], "reason": "x"},
    )
    assert refused.status_code == 404
    assert (
        post(a.clinician, "/api/v1/referrals/", {"to_institution": str(b.institution.pk), "reason": "x"}).status_code
        == 403
    )


def test_a_study_attached_after_sending_is_shared_at_once(tenants, ct):
    from .conftest import sent

    a, b = tenants.a, tenants.b
    referral = sent(tenants, ct)
    later = archived_study(a.institution, patient_id=ct.patient.patient_id, patient_name=ct.patient.name)
    assert probe(b.clinician, later).nowhere
    post(a.referral_coordinator, f"/api/v1/referrals/{referral.pk}/attach/", {"study": str(later.pk)})
    assert probe(b.clinician, later).everywhere
    assert Study.objects.filter(pk=later.pk).exists()


def test_the_referral_list_costs_the_same_queries_for_one_row_or_many(tenants, ct):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from .conftest import sent

    client = api_client(tenants.b.referral_coordinator)
    QUERIES: list = []

    def count() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            rows = client.get("/api/v1/referrals/", {"box": "inbox"}).json()["results"]
        QUERIES[:] = queries.captured_queries
        return len(rows), len(queries)

    sent(tenants, ct)
    count()  # the first request also looks up the token and memberships, which are then reused
    one = count()
    for _ in range(3):
        sent(tenants, archived_study(tenants.a.institution))
    count()  # the new shares' grants cleared those memos: read again once, as the first request did
    many = count()
    assert one[0] == 1 and many[0] == 4
    assert many[1] == one[1], "\n".join(q["sql"][:150] for q in QUERIES)
    assert one[1] <= 12


def test_images_made_in_care_travel_back_down_with_the_patient(tenants, ct):
    from .conftest import sent

    a, b = tenants.a, tenants.b
    referral = sent(tenants, ct)
    url = f"/api/v1/referrals/{referral.pk}/"
    follow_up = archived_study(b.institution, description="CT HEAD POST-OP")
    # Not before the patient is in the receiver's care, and never another institution's study.
    assert post(b.referral_coordinator, url + "attach/", {"study": str(follow_up.pk)}).status_code == 409
    post(b.referral_coordinator, url + "accept/")
    post(b.referral_coordinator, url + "admit/")
    assert post(b.referral_coordinator, url + "attach/", {"study": str(ct.pk)}).status_code == 400
    assert probe(a.clinician, follow_up).nowhere
    answer = post(b.referral_coordinator, url + "attach/", {"study": str(follow_up.pk)})
    assert answer.status_code == 200, answer.content
    back = [s for s in answer.json()["studies"] if s["id"] == str(follow_up.pk)][0]
    assert back["shared"] is True and back["institution"] == str(b.institution.pk)
    # The sender's team sees the tertiary hospital's images; the outsider does not.
    assert probe(a.clinician, follow_up).everywhere
    assert probe(tenants.c.clinician, follow_up).nowhere
    post(
        b.referral_coordinator,
        url + "return/",
        {"discharge_summary": "evacuated", "follow_up_plan": "clinic in 2 weeks"},
    )
    assert probe(a.clinician, follow_up).everywhere
    post(a.referral_coordinator, url + "close/")
    assert probe(a.clinician, follow_up).nowhere and probe(b.clinician, ct).nowhere
    assert probe(b.clinician, follow_up).everywhere
