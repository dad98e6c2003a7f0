"""Signing: the signature verifies, any changed byte fails, final content never changes, addenda keep every version."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from django.db import IntegrityError, InternalError, ProgrammingError, connection, transaction

from pacs_cloud.models import AuditEvent
from reports import actions, signing
from reports.models import FinalReportError, ImmutableError, Report, ReportVersion, SigningKey
from tests.conftest import PASSWORD, api_client, requires_postgres

from .conftest import write_and_sign


def test_a_signed_report_verifies(reading):
    report, version = write_and_sign(reading)
    assert report.state == Report.State.FINAL
    result = signing.verify(version)
    assert result.valid, result.problems
    assert version.key_images[0]["sha256"] == reading.instance.sha256
    assert version.key_images[0]["sop_instance_uid"] == reading.instance.sop_instance_uid
    body = api_client(reading.tenant.clinician).get(f"/api/v1/reports/{report.pk}/verify/").json()
    assert body["valid"] is True
    assert body["versions"][0]["code"] == version.verification_code


def _fresh(version: ReportVersion) -> ReportVersion:
    return ReportVersion.objects.select_related("signing_key", "signer", "report__study__patient").get(pk=version.pk)


def test_a_changed_byte_anywhere_fails_verification(reading):
    _, version = write_and_sign(reading)
    assert signing.verify(_fresh(version)).valid
    canonical = bytes(version.canonical)
    loaded = _fresh(version)
    # Every byte of the signed form and of the signature, one at a time.
    for field, data in (("canonical", canonical), ("signature", bytes(version.signature))):
        for i in range(len(data)):
            tampered = copy.copy(loaded)
            changed = bytearray(data)
            changed[i] ^= 0x01
            setattr(tampered, field, bytes(changed))
            assert not signing.verify(tampered, check_archive=False).valid, (field, i)
    # Every stored field the form is rebuilt from.
    edits = {
        "content": lambda v: v.content.__setitem__("findings", v.content["findings"].replace("6 mm", "5 mm")),
        "impression": lambda v: v.content.__setitem__("impression", v.content["impression"] + " "),
        "key image hash": lambda v: v.key_images[0].__setitem__("sha256", "0" * 64),
        "key image frame": lambda v: v.key_images[0].__setitem__("frame", 2),
        "signer name": lambda v: setattr(v, "signer_name", v.signer_name + "x"),
        "signed at": lambda v: setattr(v, "signed_at", v.signed_at + dt.timedelta(microseconds=1)),
        "kind": lambda v: setattr(v, "kind", "preliminary"),
        "number": lambda v: setattr(v, "number", 2),
        "previous": lambda v: setattr(v, "previous_sha256", "1" * 64),
        "code": lambda v: setattr(v, "verification_code", "AAAA-AAAA-AAAA-AAAA"),
        "study uid": lambda v: setattr(v.report.study, "study_instance_uid", v.report.study.study_instance_uid + "1"),
        "patient id": lambda v: setattr(v.report.study.patient, "patient_id", "X"),
    }
    for name, edit in edits.items():
        tampered = _fresh(version)
        tampered.content = copy.deepcopy(tampered.content)
        tampered.key_images = copy.deepcopy(tampered.key_images)
        edit(tampered)
        assert not signing.verify(tampered).valid, name


def test_another_key_does_not_verify(reading):
    _, version = write_and_sign(reading)
    tampered = _fresh(version)
    tampered.signing_key = signing.create_key(reading.tenant.radiologist)
    assert not signing.verify(tampered).valid


def test_the_private_key_is_encrypted_at_rest_and_bound_to_its_owner(reading):
    key = signing.active_key(reading.tenant.radiologist)
    private = signing.private_key(key)
    raw = private.private_bytes_raw()
    assert raw not in bytes(key.encrypted_private_key)
    stolen = SigningKey.objects.get(pk=key.pk)
    stolen.user_id = reading.tenant.clinician.pk
    with pytest.raises(signing.SigningError):
        signing.private_key(stolen)


def test_signing_asks_for_the_password_again(reading):
    user = reading.tenant.radiologist
    report, _ = actions.do_create_report(reading.study, acting_user=user, template=reading.template)
    actions.do_autosave_draft(
        report, acting_user=user, content={**report.draft, "findings": "Normal."}, base_revision=None
    )
    client = api_client(user)
    refused = client.post(f"/api/v1/reports/{report.pk}/sign/", {"password": "wrong"}, format="json")
    assert refused.status_code == 403
    assert Report.objects.get(pk=report.pk).state == Report.State.DRAFT
    assert not ReportVersion.objects.filter(report=report).exists()
    signed = client.post(f"/api/v1/reports/{report.pk}/sign/", {"password": PASSWORD}, format="json")
    assert signed.status_code == 201, signed.content
    assert Report.objects.get(pk=report.pk).state == Report.State.FINAL


@requires_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refused_signature_leaves_an_audit_event(reading):
    author = reading.tenant.radiologist
    report, _ = actions.do_create_report(reading.study, acting_user=author, template=reading.template)
    actions.do_autosave_draft(
        report, acting_user=author, content={**report.draft, "findings": "Normal."}, base_revision=None
    )
    # Someone who does not read the study, then the author once the report is final.
    stranger = reading.tenant.clinician
    refused = api_client(stranger).post(f"/api/v1/reports/{report.pk}/sign/", {"password": PASSWORD}, format="json")
    assert refused.status_code == 403
    actions.do_sign_report(Report.objects.get(pk=report.pk), acting_user=author, password=PASSWORD)
    with pytest.raises(actions.ReportRefused):
        actions.do_sign_report(Report.objects.get(pk=report.pk), acting_user=author, password=PASSWORD)
    events = AuditEvent.objects.filter(action="report.sign_refused", object_id=str(report.pk)).order_by("id")
    assert [(e.actor_id, e.outcome, e.detail["reason"]) for e in events] == [
        (stranger.pk, AuditEvent.Outcome.DENIED, "not_author"),
        (author.pk, AuditEvent.Outcome.FAILURE, "final"),
    ]


def test_an_edit_of_a_final_report_is_refused_through_every_route(reading):
    report, version = write_and_sign(reading)
    client = api_client(reading.tenant.radiologist)
    content = {**report.draft, "findings": "Changed after signing."}
    for method, url in (("patch", f"/api/v1/reports/{report.pk}/"), ("put", f"/api/v1/reports/{report.pk}/draft/")):
        response = getattr(client, method)(url, {"content": content}, format="json")
        assert response.status_code == 409, (method, response.content)
        assert response.json()["code"] == "final"
    again = client.post(f"/api/v1/reports/{report.pk}/sign/", {"password": PASSWORD}, format="json")
    assert again.status_code == 409
    # The model refuses too, whoever calls it.
    row = Report.objects.get(pk=report.pk)
    row.draft = content
    with pytest.raises(FinalReportError):
        row.save()
    signed = ReportVersion.objects.get(pk=version.pk)
    signed.content = content
    with pytest.raises(ImmutableError):
        signed.save()
    with pytest.raises(ImmutableError):
        signed.delete()
    assert ReportVersion.objects.get(pk=version.pk).content["findings"].startswith("A 6 mm nodule")
    assert signing.verify(_fresh(version)).valid


@requires_postgres
def test_the_database_refuses_to_change_a_signed_version(reading):
    _, version = write_and_sign(reading)
    for statement in (
        "UPDATE reports_reportversion SET content = '{}' WHERE id = %s",
        "DELETE FROM reports_reportversion WHERE id = %s",
    ):
        with pytest.raises((InternalError, ProgrammingError, IntegrityError)), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(statement, [version.pk])


@pytest.mark.parametrize("kind", ["addendum", "amendment"])
def test_an_addendum_or_amendment_keeps_every_version_verifiable(reading, kind):
    report, first = write_and_sign(reading)
    client = api_client(reading.tenant.radiologist)
    opened = client.post(f"/api/v1/reports/{report.pk}/addendum/", {"kind": kind}, format="json")
    assert opened.status_code == 200, opened.content
    draft = opened.json()["draft"]
    if kind == "addendum":
        draft["addendum"] = "Comparison with the outside CT: the nodule is stable."
    else:
        draft["impression"] = "Benign-appearing nodule; no follow-up needed."
    saved = client.put(
        f"/api/v1/reports/{report.pk}/draft/",
        {"content": draft, "base_revision": opened.json()["draft_revision"]},
        format="json",
    )
    assert saved.status_code == 200, saved.content
    signed = client.post(f"/api/v1/reports/{report.pk}/sign/", {"password": PASSWORD}, format="json")
    assert signed.status_code == 201, signed.content
    assert signed.json()["kind"] == kind
    report.refresh_from_db()
    assert report.state == Report.State.AMENDED
    versions = list(report.versions.order_by("number"))
    assert [v.number for v in versions] == [1, 2]
    assert versions[0].content == first.content  # the first version is untouched and still readable
    assert versions[1].previous_sha256 == versions[0].canonical_sha256
    body = client.get(f"/api/v1/reports/{report.pk}/verify/").json()
    assert body["valid"] and [v["valid"] for v in body["versions"]] == [True, True]
    if kind == "addendum":
        assert versions[1].content["findings"] == versions[0].content["findings"]
        assert "stable" in versions[1].content["addendum"]
    else:
        assert versions[1].content["impression"].startswith("Benign")
    detail = client.get(f"/api/v1/reports/{report.pk}/").json()
    assert [v["number"] for v in detail["versions"]] == [1, 2]
    # Editing is closed again after signing.
    assert client.put(f"/api/v1/reports/{report.pk}/draft/", {"content": draft}, format="json").status_code == 409


REPORT_FSM = {
    ("draft", "issue_preliminary"): "preliminary",
    ("draft", "sign_final"): "final",
    ("draft", "amend"): None,
    ("preliminary", "issue_preliminary"): None,
    ("preliminary", "sign_final"): "final",
    ("preliminary", "amend"): None,
    ("final", "issue_preliminary"): None,
    ("final", "sign_final"): None,
    ("final", "amend"): "amended",
    ("amended", "issue_preliminary"): None,
    ("amended", "sign_final"): None,
    ("amended", "amend"): "amended",
}


@pytest.mark.parametrize(("source", "method"), list(REPORT_FSM))
def test_report_state_machine(source, method):
    from django_fsm import TransitionNotAllowed

    report = Report()
    report.__dict__["state"] = source  # protected field: set the state as the database would load it
    target = REPORT_FSM[(source, method)]
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            getattr(report, method)(now=dt.datetime.now(dt.UTC))
    else:
        getattr(report, method)(now=dt.datetime.now(dt.UTC))
        assert report.state == target


def test_a_preliminary_report_is_signed_and_then_final(reading):
    user = reading.tenant.radiologist
    report, _ = actions.do_create_report(reading.study, acting_user=user)
    actions.do_autosave_draft(
        report, acting_user=user, content={**report.draft, "impression": "No acute finding."}, base_revision=None
    )
    first = actions.do_sign_report(report, acting_user=user, password=PASSWORD, preliminary=True)
    assert first.kind == "preliminary"
    report.refresh_from_db()
    assert report.state == Report.State.PRELIMINARY
    reading.task.refresh_from_db()
    assert reading.task.state == "preliminary"
    second = actions.do_sign_report(report, acting_user=user, password=PASSWORD)
    assert second.kind == "final" and second.previous_sha256 == first.canonical_sha256
    assert all(r.valid for r in signing.verify_report(report))
