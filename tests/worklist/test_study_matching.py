"""Arriving studies find their orders; the rest wait in the reconciliation queue."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from archive.actions import do_complete_study
from archive.ingest import store_instance
from archive.models import Study
from pacs_cloud.lib.uids import new_uid
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client
from worklist import actions, signals
from worklist.facts import study_order_facts
from worklist.models import Order, PerformedProcedureStep, ReconciliationItem


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"


@pytest.fixture
def heard():
    events = []
    signals.order_linked.connect(lambda sender, **kw: events.append(kw), weak=False, dispatch_uid="test-linked")
    yield events
    signals.order_linked.disconnect(dispatch_uid="test-linked")


def send(tmp_path: Path, institution, *, study_uid=None, patient_id="X", accession="", name="DOE^JOHN") -> Study:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.AccessionNumber, ds.PatientName = patient_id, accession, name
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    result = store_instance(path, institution=institution)
    return result.instance.series.study


def test_images_with_the_pre_assigned_uid_link_to_the_order(
    sites, order_factory, tmp_path, heard, django_capture_on_commit_callbacks
):
    order = order_factory()
    with django_capture_on_commit_callbacks(execute=True):
        study = send(tmp_path, sites["a"].institution, study_uid=order.study_instance_uid, patient_id="whatever")
    order.refresh_from_db()
    assert order.study == study
    assert order.state == Order.State.IN_PROGRESS
    assert [e["order"].pk for e in heard] == [order.pk]
    assert not ReconciliationItem.objects.exists()
    assert AuditEvent.objects.filter(action="worklist.order.link", object_id=str(order.pk)).exists()


def test_else_accession_number_and_patient_id_together_link(
    sites, order_factory, tmp_path, django_capture_on_commit_callbacks
):
    order = order_factory()
    with django_capture_on_commit_callbacks(execute=True):
        study = send(
            tmp_path, sites["a"].institution, patient_id=order.patient.patient_id, accession=order.accession_number
        )
    assert Order.objects.get(pk=order.pk).study == study


@pytest.mark.parametrize("which", ["wrong_patient", "other_institution", "nothing"])
def test_anything_less_goes_to_the_reconciliation_queue(
    sites, order_factory, tmp_path, which, django_capture_on_commit_callbacks
):
    order = order_factory()
    keys = {
        "wrong_patient": {"patient_id": "SOMEONE", "accession": order.accession_number},
        "other_institution": {"study_uid": order.study_instance_uid},
        "nothing": {},
    }[which]
    institution = sites["b" if which == "other_institution" else "a"].institution
    with django_capture_on_commit_callbacks(execute=True):
        study = send(tmp_path, institution, **keys)
    assert Order.objects.get(pk=order.pk).study is None
    item = ReconciliationItem.objects.get()
    assert (item.study, item.institution) == (study, institution)


def test_a_technologist_links_or_dismisses_through_the_api(
    sites, tenants, order_factory, tmp_path, django_capture_on_commit_callbacks
):
    order = order_factory()
    with django_capture_on_commit_callbacks(execute=True):
        first = send(tmp_path, sites["a"].institution)
        second = send(tmp_path, sites["a"].institution)
    desk = api_client(tenants.a.technologist)
    queue = desk.get("/api/v1/reconciliation/").json()["results"]
    assert {q["study"]["id"] for q in queue} == {str(first.pk), str(second.pk)}
    one = next(q for q in queue if q["study"]["id"] == str(first.pk))
    two = next(q for q in queue if q["study"]["id"] == str(second.pk))

    assert (
        api_client(tenants.c.technologist)
        .post(f"/api/v1/reconciliation/{one['id']}/link/", {"order": str(order.pk)}, format="json")
        .status_code
        == 404
    )
    assert api_client(tenants.a.clinician).get("/api/v1/reconciliation/").status_code == 403

    linked = desk.post(f"/api/v1/reconciliation/{one['id']}/link/", {"order": str(order.pk)}, format="json")
    assert linked.status_code == 200 and linked.json()["study"] == str(first.pk)
    again = desk.post(f"/api/v1/reconciliation/{two['id']}/link/", {"order": str(order.pk)}, format="json")
    assert again.status_code == 400  # the order already has its study
    assert desk.post(f"/api/v1/reconciliation/{two['id']}/dismiss/", {"note": ""}, format="json").status_code == 400
    dismissed = desk.post(f"/api/v1/reconciliation/{two['id']}/dismiss/", {"note": "outside prior"}, format="json")
    assert dismissed.json()["resolution"] == "dismissed"
    assert desk.get("/api/v1/reconciliation/").json()["results"] == []


def test_a_complete_study_completes_its_order_unless_the_modality_is_still_working(
    sites, order_factory, tmp_path, django_capture_on_commit_callbacks
):
    with_mpps, without = order_factory(), order_factory()
    with django_capture_on_commit_callbacks(execute=True):
        busy = send(tmp_path, sites["a"].institution, study_uid=with_mpps.study_instance_uid)
        done = send(tmp_path, sites["a"].institution, study_uid=without.study_instance_uid)
    PerformedProcedureStep.objects.create(
        institution=sites["a"].institution, sop_instance_uid=new_uid(), order=with_mpps, station_ae_title="ALPHA_CT"
    )
    with django_capture_on_commit_callbacks(execute=True):
        do_complete_study(busy, actor_label="stability sweep")
        do_complete_study(done, actor_label="stability sweep")
    assert Order.objects.get(pk=without.pk).state == Order.State.COMPLETED
    assert Order.objects.get(pk=with_mpps.pk).state == Order.State.IN_PROGRESS


def test_a_signed_report_completes_the_order_once(sites, order_factory):
    order = order_factory()
    assert actions.do_complete_order(order, actor_label="report signed")
    assert not actions.do_complete_order(order, actor_label="report signed")
    assert Order.objects.get(pk=order.pk).state == Order.State.COMPLETED


def test_the_routing_facts_of_a_study(sites, order_factory, tmp_path, django_capture_on_commit_callbacks):
    order = order_factory(priority="stat", clinical_info="head trauma", referring_physician="WU^DR")
    with django_capture_on_commit_callbacks(execute=True):
        study = send(tmp_path, sites["a"].institution, study_uid=order.study_instance_uid)
    facts = study_order_facts(study)
    assert facts is not None
    assert (facts.order_id, facts.priority, facts.procedure_code, facts.body_part, facts.modality) == (
        order.pk,
        "stat",
        "CTCHEST",
        "CHEST",
        "CT",
    )
    assert (facts.clinical_info, facts.referring_physician) == ("head trauma", "WU^DR")
    assert study_order_facts(send(tmp_path, sites["a"].institution)) is None


def test_a_linked_study_joins_the_orders_registered_patient(
    sites, order_factory, tmp_path, django_capture_on_commit_callbacks
):
    order = order_factory(name="CHEN^JING=陈^静")
    with django_capture_on_commit_callbacks(execute=True):
        study = send(
            tmp_path, sites["a"].institution, study_uid=order.study_instance_uid, patient_id="TYPO", name="CHN^JING"
        )
    study.refresh_from_db()
    assert study.patient == order.patient
    assert AuditEvent.objects.filter(action="archive.study.relink", object_id=str(study.pk)).exists()


def test_correcting_the_patient_id_matches_the_study_to_its_exam(
    sites, tenants, order_factory, tmp_path, django_capture_on_commit_callbacks
):
    order = order_factory(name="LIU^YANG=刘^洋")
    with django_capture_on_commit_callbacks(execute=True):
        study = send(
            tmp_path, sites["a"].institution, patient_id="1234", accession=order.accession_number, name="LIU^YANG"
        )
    item = ReconciliationItem.objects.get(study=study)
    desk = api_client(tenants.a.technologist)
    with django_capture_on_commit_callbacks(execute=True):
        response = desk.post(
            f"/api/v1/reconciliation/{item.pk}/correct/",
            {"name": "LIU^YANG=刘^洋", "patient_id": order.patient.patient_id},
            format="json",
        )
    assert response.status_code == 200, response.json()
    assert response.json()["resolution"] == "linked"
    study.refresh_from_db()
    assert study.patient == order.patient
    assert Order.objects.get(pk=order.pk).study == study
    assert AuditEvent.objects.filter(action="worklist.reconciliation.correct").exists()


def test_correcting_demographics_goes_through_the_archive_and_keeps_the_item_open(
    sites, tenants, tmp_path, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        study = send(tmp_path, sites["a"].institution, patient_id="A-9", name="ZHNG^SAN")
    item = ReconciliationItem.objects.get(study=study)
    desk = api_client(tenants.a.technologist)
    response = desk.post(
        f"/api/v1/reconciliation/{item.pk}/correct/",
        {"name": "ZHANG^SAN=张^三", "patient_id": "A-9", "birth_date": "1970-01-01", "sex": "M"},
        format="json",
    )
    assert response.status_code == 200 and response.json()["resolution"] == ""
    study.patient.refresh_from_db()
    assert (study.patient.name, study.patient.sex) == ("ZHANG^SAN=张^三", "M")
    event = AuditEvent.objects.get(action="archive.patient.correct")
    assert event.detail["changed"]["PatientName"] == {"from": "ZHNG^SAN", "to": "ZHANG^SAN=张^三"}
    assert (
        api_client(tenants.c.technologist)
        .post(f"/api/v1/reconciliation/{item.pk}/correct/", {"name": "X"}, format="json")
        .status_code
        == 404
    )
