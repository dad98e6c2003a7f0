"""One patient across hospitals: links, consent, linked priors as comparisons, audit, who looked.

Hospital a refers 张三 to hospital b; b imports the referred CT under its own
patient, which links the two. While the referral's consent (or a consent
record of its own) lasts, b's reader of a new CT gets a's earlier CT as a
comparison through the reading task's prior grants; ending the consent
closes it on every study route at once (the isolation harness's routes).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, web_client
from tests.isolation.harness import ask, client_for
from tests.isolation.registry import load_registrations
from tests.referrals.test_isolation_grants import _path, _study_routes
from workflow.links import actions
from workflow.links.models import LinkSuggestion, PatientConsent, PatientLink
from workflow.models import TaskPrior
from workflow.referrals import actions as referral_actions
from workflow.referrals.models import StudyShare

from .helpers import claimed_task, exam, study_of, study_values


@pytest.fixture
def storage(settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"


@pytest.fixture
def referred(tenants, storage):
    """张三 at a (an older head CT and the referred one), referred to b, accepted, the CT imported at b."""
    a, b = tenants.a, tenants.b
    older = exam(a.institution, patient_id="ZS-A", day="20240601")
    sent = exam(a.institution, patient_id="ZS-A", day="20250314")
    referral = referral_actions.do_create_referral(
        acting_user=a.referral_coordinator,
        from_institution=a.institution,
        to_institution=b.institution,
        patient=study_of(sent).patient,
        reason="神经外科会诊",
        studies=[study_of(sent)],
    )
    referral_actions.do_record_consent(referral, acting_user=a.referral_coordinator, method="written")
    referral_actions.do_send_referral(referral, acting_user=a.referral_coordinator)
    referral_actions.do_accept_referral(referral, acting_user=b.referral_coordinator)
    share = StudyShare.objects.get(referral=referral, study=study_of(sent))
    imported = referral_actions.do_import_share(share, acting_user=b.referral_coordinator, patient_id="ZS-B")
    current = exam(b.institution, patient_id="ZS-B", issuer=imported.patient.issuer, day="20261102")
    return {"older": older, "sent": sent, "referral": referral, "imported": imported, "current": current}


def prior_ids(user, study) -> list[str]:
    response = api_client(user).get(f"/api/v1/studies/{study.pk}/priors/")
    assert response.status_code == 200
    return [p["id"] for p in response.json()["priors"]]


def test_a_referred_patients_prior_is_compared_at_the_receiver_only_while_consent_lasts(tenants, referred):
    a, b = tenants.a, tenants.b
    link = PatientLink.objects.get(unlinked_at__isnull=True)
    assert link.source == PatientLink.Source.REFERRAL_IMPORT
    assert {link.patient_id, link.other_patient_id} == {
        study_of(referred["sent"]).patient_id,
        referred["imported"].patient_id,
    }

    older = study_of(referred["older"])
    routes = list(_study_routes(load_registrations()))
    assert len(routes) > 15
    values = study_values(referred["older"])
    reader = client_for(b.radiologist)
    before = {_path(r, load_registrations(), values): None for r in routes}
    for path in before:
        before[path] = ask(reader, "get", path).status
    assert set(before.values()) <= {403, 404, 405}, before

    task = claimed_task(study_of(referred["current"]), b.radiologist)
    # b's own copy of the referred CT and a's older CT (the referred original counts once, as b's copy).
    assert prior_ids(b.radiologist, study_of(referred["current"])) == [
        str(referred["imported"].study_id),
        str(older.pk),
    ]
    priors = api_client(b.radiologist).get(f"/api/v1/studies/{referred['current'].series.study_id}/priors/").json()
    assert priors["priors"][1]["hospital"] == a.institution.name
    owner = client_for(a.clinician)
    opened = 0
    for route in routes:
        path = _path(route, load_registrations(), values)
        mine, theirs = ask(owner, "get", path).status, ask(reader, "get", path).status
        assert theirs == mine, f"{path}: a's clinician gets {mine}, b's reader {theirs}"
        opened += 200 <= theirs < 300
    assert opened >= 10
    # Nobody else at b: the grant is the reading task's, not the institution's.
    assert api_client(b.clinician).get(f"/api/v1/studies/{older.pk}/").status_code == 404

    # The referral ends: its consent with it, and the prior everywhere at once.
    referral_actions.do_cancel_referral(referred["referral"], acting_user=a.referral_coordinator, reason="病人拒绝")
    assert not TaskPrior.objects.filter(task=task, study=older).exists()
    for route in routes:
        path = _path(route, load_registrations(), values)
        assert ask(reader, "get", path).status == before[path], path
    assert prior_ids(b.radiologist, study_of(referred["current"])) == [str(referred["imported"].study_id)]
    withdrawn = AuditEvent.objects.get(action="workflow.taskprior.withdraw")
    assert withdrawn.detail["prior"] == str(older.pk) and withdrawn.detail["reason"] == "referral cancelled"


def test_a_consent_of_its_own_gives_the_priors_until_revoked(tenants, referred):
    a, b = tenants.a, tenants.b
    referral_actions.do_cancel_referral(referred["referral"], acting_user=a.referral_coordinator, reason="done")
    older = study_of(referred["older"])
    # Claimed before the consent: granted when it is recorded, without a new claim.
    claimed_task(study_of(referred["current"]), b.radiologist)
    assert str(older.pk) not in prior_ids(b.radiologist, study_of(referred["current"]))
    consent = api_client(a.referral_coordinator).post(
        "/api/v1/consents/",
        {"patient": str(older.patient_id), "receiving_institution": str(b.institution.pk), "method": "written"},
        format="json",
    )
    assert consent.status_code == 201, consent.content
    assert str(older.pk) in prior_ids(b.radiologist, study_of(referred["current"]))
    assert api_client(b.radiologist).get(f"/api/v1/studies/{older.pk}/").status_code == 200

    # Only the granting hospital revokes; then the prior is gone at once.
    pk = consent.json()["id"]
    assert api_client(b.referral_coordinator).post(f"/api/v1/consents/{pk}/revoke/").status_code == 403
    assert api_client(tenants.c.referral_coordinator).post(f"/api/v1/consents/{pk}/revoke/").status_code == 404
    revoked = api_client(a.referral_coordinator).post(
        f"/api/v1/consents/{pk}/revoke/", {"reason": "撤回"}, format="json"
    )
    assert revoked.status_code == 200 and revoked.json()["in_force"] is False
    assert api_client(b.radiologist).get(f"/api/v1/studies/{older.pk}/").status_code == 404
    assert str(older.pk) not in prior_ids(b.radiologist, study_of(referred["current"]))


def test_the_expiry_sweep_ends_a_consent_and_its_priors(tenants, referred):
    a, b = tenants.a, tenants.b
    referral_actions.do_cancel_referral(referred["referral"], acting_user=a.referral_coordinator, reason="done")
    older = study_of(referred["older"])
    consent = actions.do_record_patient_consent(
        older.patient,
        receiving_institution=b.institution,
        acting_user=a.referral_coordinator,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    claimed_task(study_of(referred["current"]), b.radiologist)
    assert api_client(b.radiologist).get(f"/api/v1/studies/{older.pk}/").status_code == 200
    assert actions.do_sweep_consents() == {"consents_expired": 0, "priors_withdrawn": 0}
    # The expired consent withdraws its prior itself; the second pass finds nothing left.
    result = actions.do_sweep_consents(now=timezone.now() + timedelta(hours=2))
    assert result == {"consents_expired": 1, "priors_withdrawn": 0}
    consent.refresh_from_db()
    assert consent.revoked_at is not None and consent.revoke_reason == "expired"
    assert api_client(b.radiologist).get(f"/api/v1/studies/{older.pk}/").status_code == 404
    assert actions.do_sweep_consents(now=timezone.now() + timedelta(hours=2))["consents_expired"] == 0


def test_suggestions_never_link_until_a_coordinator_confirms(tenants, storage):
    a, b = tenants.a, tenants.b
    theirs = study_of(exam(a.institution, patient_id="ZS-A", day="20240601", national_id="110101196003150011"))
    ours = study_of(exam(b.institution, patient_id="B-778", day="20261102", national_id="110101196003150011"))
    namesake = study_of(exam(b.institution, patient_id="B-779", day="20261101"))
    stranger = study_of(exam(b.institution, patient_id="B-780", day="20261101", name="李四", birth="19700101"))
    assert theirs.patient.national_id == "110101196003150011"

    consent = actions.do_record_patient_consent(
        theirs.patient, receiving_institution=b.institution, acting_user=a.referral_coordinator
    )
    # Suggested, scored, never linked by itself; the reader of b's CT sees nothing of a's.
    found = api_client(b.referral_coordinator).get("/api/v1/link-suggestions/").json()["results"]
    assert [(s["patient"]["patient_id"], s["score"]) for s in found] == [("B-778", 100), ("B-779", 60)]
    assert found[0]["reasons"] == ["national identifier", "birth date", "name", "sex"]
    assert stranger.patient_id not in {s["patient"]["id"] for s in found}
    assert not PatientLink.objects.exists()
    claimed_task(ours, b.radiologist)
    assert prior_ids(b.radiologist, ours) == []
    assert api_client(a.referral_coordinator).get("/api/v1/link-suggestions/").json()["results"] == []
    assert (
        api_client(tenants.c.referral_coordinator)
        .post(f"/api/v1/link-suggestions/{found[0]['id']}/confirm/")
        .status_code
        == 404
    )

    # Rejected: closed, not made again when the consent is recorded anew.
    rejected = api_client(b.referral_coordinator).post(f"/api/v1/link-suggestions/{found[1]['id']}/reject/")
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    # The coordinators' page lists it with its score; its button links.
    page = web_client(b.referral_coordinator).get("/patient-links/")
    html = page.content.decode()
    assert page.status_code == 200 and f'data-suggestion="{found[0]["id"]}"' in html
    assert '<td class="score">100</td>' in html and "张三" in html and a.institution.name in html
    assert f'data-suggestion="{found[1]["id"]}"' not in html  # rejected
    confirmed = web_client(b.referral_coordinator).post(
        "/patient-links/act/", {"action": "confirm", "pk": found[0]["id"]}
    )
    assert confirmed.status_code == 302
    assert "data-link=" in web_client(b.referral_coordinator).get("/patient-links/").content.decode()
    link = PatientLink.objects.get()
    assert (link.source, link.score) == (PatientLink.Source.CONFIRMED_MATCH, 100)
    assert namesake.patient_id not in {link.patient_id, link.other_patient_id}
    actions.do_suggest_links(consent)
    assert LinkSuggestion.objects.filter(state=LinkSuggestion.State.PENDING).count() == 0

    # Linked and consented: the next claim at b compares a's CT.
    b_second = study_of(exam(b.institution, patient_id="B-778", day="20261203"))
    claimed_task(b_second, b.radiologist)
    assert str(theirs.pk) in prior_ids(b.radiologist, b_second)

    # Unlinked by either side: withdrawn at once.
    unlinked = api_client(a.referral_coordinator).post(
        f"/api/v1/patient-links/{link.pk}/unlink/", {"reason": "错配"}, format="json"
    )
    assert unlinked.status_code == 200 and unlinked.json()["unlinked_at"]
    assert api_client(b.radiologist).get(f"/api/v1/studies/{theirs.pk}/").status_code == 404
    assert PatientConsent.objects.get(pk=consent.pk).in_force()  # the consent stays; only the link ended


def test_every_link_unlink_and_cross_hospital_read_is_audited_and_shown_to_the_patients_hospital(tenants, referred):
    a, b = tenants.a, tenants.b
    older = study_of(referred["older"])
    link = PatientLink.objects.get()
    claimed_task(study_of(referred["current"]), b.radiologist)
    assert web_client(b.radiologist).get(f"/viewer/studies/{older.pk}/").status_code == 200
    actions.do_unlink_patients(link, acting_user=b.referral_coordinator, reason="测试")

    events = AuditEvent.objects.filter(object_id=str(link.pk)).order_by("id")
    assert [(e.action, e.institution_id) for e in events] == [
        ("workflow.patientlink.link", link.institution_id),
        ("workflow.patientlink.link", link.other_institution_id),
        ("workflow.patientlink.unlink", link.institution_id),
        ("workflow.patientlink.unlink", link.other_institution_id),
    ]
    read = AuditEvent.objects.get(action="study.view", object_id=str(older.pk))
    assert read.actor == b.radiologist.username and read.detail["as_prior"] is True

    # a's clinician sees who at b looked; nobody else sees a's list.
    reads = api_client(a.clinician).get(f"/api/v1/patients/{older.patient_id}/outside-reads/")
    assert reads.status_code == 200
    rows = reads.json()["reads"]
    assert {(r["user"], tuple(r["institutions"]), r["as_prior"]) for r in rows if r["study"] == str(older.pk)} >= {
        (b.radiologist.username, (b.institution.name,), True)
    }
    assert all(r["user"] not in {u.username for u in a.users.values()} for r in rows)
    for outsider in (b.clinician, tenants.c.clinician):
        assert api_client(outsider).get(f"/api/v1/patients/{older.patient_id}/outside-reads/").status_code == 404
        assert web_client(outsider).get(f"/patients/{older.patient_id}/outside-reads/").status_code == 404
    page = web_client(a.clinician).get(f"/patients/{older.patient_id}/outside-reads/")
    html = page.content.decode()
    assert page.status_code == 200 and b.radiologist.username in html and b.institution.name in html
    assert "张三" in html and "UTC+8" in html
    assert AuditEvent.objects.filter(action="workflow.outside_reads", actor=a.clinician.username).count() == 2
    # Found by patient ID at the patient's own hospital only.
    found = web_client(a.clinician).get("/patient-links/reads/", {"patient_id": "ZS-A"}).content.decode()
    assert f"/patients/{older.patient_id}/outside-reads/" in found
    for outsider in (b.clinician, tenants.c.clinician):
        elsewhere = web_client(outsider).get("/patient-links/reads/", {"patient_id": "ZS-A"}).content.decode()
        assert str(older.patient_id) not in elsewhere and "张三" not in elsewhere
