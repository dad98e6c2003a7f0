"""MPPS N-CREATE/N-SET from a pynetdicom SCU: orders follow, bad messages change nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from archive.dimse import start_server
from archive.ingest import store_instance
from archive.models import Study
from pacs_cloud.lib.uids import new_uid
from pacs_cloud.models import AuditEvent
from tests.conftest import free_port
from worklist.actions import MppsError, do_create_mpps, do_update_mpps
from worklist.models import Order, PerformedProcedureStep

PROVIDERS = ["worklist.dimse.services"]


@pytest.fixture
def scp(sites, transactional_db, settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port, providers=PROVIDERS)
    yield port
    server.shutdown()


class Modality:
    """A modality's MPPS SCU on one association."""

    def __init__(self, port: int, ae_title: str = "ALPHA_CT") -> None:
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="PACSCLOUD")
        assert self.assoc.is_established

    def create(self, uid: str | None, ds: Dataset) -> Dataset:
        status, _ = self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return status

    def set(self, uid: str, ds: Dataset) -> Dataset:
        status, _ = self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return status

    def close(self) -> None:
        self.assoc.release()


@pytest.fixture
def modality(scp):
    opened = []

    def open_(ae_title: str = "ALPHA_CT") -> Modality:
        opened.append(Modality(scp, ae_title))
        return opened[-1]

    yield open_
    for m in opened:
        m.close()


def in_progress(order: Order, **overrides) -> Dataset:
    """An N-CREATE attribute list as a modality sends it for ``order`` (PS3.4 F.7.2-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    item = Dataset()
    item.StudyInstanceUID = order.study_instance_uid
    item.AccessionNumber = order.accession_number
    item.RequestedProcedureID = order.requested_procedure_id
    item.ScheduledProcedureStepID = order.sps_id
    item.ReferencedStudySequence = Sequence()
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PatientName = order.patient.name
    ds.PatientID = order.patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedStationAETitle = "ALPHA_CT"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = dt.date.today().strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def completed(series: list[tuple[str, list[str]]], status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = dt.date.today().strftime("%Y%m%d")
    ds.PerformedProcedureStepEndTime = "103000"
    items = []
    for series_uid, sops in series:
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.PerformingPhysicianName = ""
        item.ProtocolName = "CHEST"
        item.OperatorsName = ""
        item.SeriesDescription = ""
        item.RetrieveAETitle = ""
        refs = []
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ref.ReferencedSOPInstanceUID = sop
            refs.append(ref)
        item.ReferencedImageSequence = Sequence(refs)
        item.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
        items.append(item)
    ds.PerformedSeriesSequence = Sequence(items)
    return ds


def image(order: Order, series_uid: str, sop_uid: str, tmp_path: Path) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = order.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.PatientID = order.patient.patient_id
    ds.PatientName = order.patient.name
    ds.AccessionNumber = order.accession_number
    path = tmp_path / f"{sop_uid}.dcm"
    ds.save_as(path)
    return path


def create_directly(order: Order, ds: Dataset, uid: str | None = None) -> int:
    """N-CREATE through the action the DIMSE handler calls; the status it would answer."""
    try:
        do_create_mpps(uid or new_uid(), ds, institution=order.institution, ae_title="ALPHA_CT")
    except MppsError as exc:
        return exc.status
    return 0x0000


def set_directly(order: Order, uid: str, ds: Dataset) -> int:
    try:
        do_update_mpps(uid, ds, institution=order.institution, ae_title="ALPHA_CT")
    except MppsError as exc:
        return exc.status
    return 0x0000


def state(order: Order) -> str:
    return Order.objects.get(pk=order.pk).state


def test_an_mpps_sequence_moves_the_order_and_completes_the_study(modality, order_factory, sites, tmp_path):
    order = order_factory()
    ct = modality()
    uid = new_uid()
    assert ct.create(uid, in_progress(order)).Status == 0x0000
    assert state(order) == Order.State.IN_PROGRESS

    series_uid, sops = new_uid(), [new_uid(), new_uid()]
    store_instance(image(order, series_uid, sops[0], tmp_path), institution=sites["a"].institution)
    assert ct.set(uid, completed([(series_uid, sops)])).Status == 0x0000
    assert state(order) == Order.State.COMPLETED
    study = Study.objects.get(study_instance_uid=order.study_instance_uid)
    assert study.state == Study.State.RECEIVING  # one referenced image is still missing

    store_instance(image(order, series_uid, sops[1], tmp_path), institution=sites["a"].institution)
    study.refresh_from_db()
    assert study.state != Study.State.RECEIVING  # complete (and then routed, when routing runs)
    assert study.completed_at is not None
    assert Order.objects.get(pk=order.pk).study == study
    step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert step.state == PerformedProcedureStep.State.COMPLETED
    assert step.order == order


def test_discontinued_mpps_discontinues_the_order(order_factory):
    order = order_factory()
    uid = new_uid()
    create_directly(order, in_progress(order), uid)
    stop = completed([(new_uid(), [])], status="DISCONTINUED")
    reason = Dataset()
    reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning = (
        "110514",
        "DCM",
        "Incorrect worklist entry selected",
    )
    stop.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    assert set_directly(order, uid, stop) == 0x0000
    order.refresh_from_db()
    assert order.state == Order.State.DISCONTINUED
    assert "Incorrect worklist entry selected" in order.cancel_reason


def test_the_scp_assigns_a_uid_when_the_modality_gives_none(modality, order_factory):
    order = order_factory()
    status = modality().create(None, in_progress(order))
    assert status.Status == 0x0000
    assert PerformedProcedureStep.objects.get().order == order


def test_an_unscheduled_step_is_recorded_without_an_order(order_factory):
    order = order_factory()
    ds = in_progress(order)
    ds.ScheduledStepAttributesSequence[0].StudyInstanceUID = new_uid()
    ds.ScheduledStepAttributesSequence[0].AccessionNumber = ""
    assert create_directly(order, ds) == 0x0000
    assert PerformedProcedureStep.objects.get().order is None
    assert state(order) == Order.State.SCHEDULED


def _nothing_changed(order: Order, steps: int = 0) -> None:
    assert state(order) == Order.State.SCHEDULED
    assert PerformedProcedureStep.objects.count() == steps


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"PerformedProcedureStepStatus": "COMPLETED"}, 0x0106),  # a new step must be IN PROGRESS
        ({"PerformedProcedureStepStatus": "STARTED"}, 0x0106),
        ({"PerformedStationAETitle": None}, 0x0120),  # a Type 1 attribute missing
        ({"PerformedProcedureStepID": ""}, 0x0121),  # a Type 1 attribute empty
        ({"Modality": None}, 0x0120),
        ({"ScheduledStepAttributesSequence": Sequence()}, 0x0120),
        ({"PerformedProcedureStepStartDate": "20241301"}, 0x0106),
    ],
)
def test_a_bad_n_create_is_refused_and_changes_nothing(order_factory, overrides, status):
    order = order_factory()
    assert create_directly(order, in_progress(order, **overrides)) == status
    _nothing_changed(order)


def test_a_refused_n_create_reaches_the_modality_with_its_status(modality, order_factory):
    order = order_factory()
    status = modality().create(new_uid(), in_progress(order, PerformedProcedureStepStatus="COMPLETED"))
    assert status.Status == 0x0106
    assert "IN PROGRESS" in status.ErrorComment
    _nothing_changed(order)


def test_a_duplicate_n_create_is_refused(modality, order_factory):
    order = order_factory()
    ct, uid = modality(), new_uid()
    ct.create(uid, in_progress(order))
    assert ct.create(uid, in_progress(order)).Status == 0x0111
    assert PerformedProcedureStep.objects.count() == 1


def test_an_n_create_for_a_cancelled_order_is_refused(order_factory):
    from worklist.actions import do_cancel_order

    order = do_cancel_order(order_factory(), reason="wrong patient")
    assert create_directly(order, in_progress(order)) == 0x0110
    assert PerformedProcedureStep.objects.count() == 0
    assert state(order) == Order.State.CANCELLED


def test_an_n_set_before_its_n_create_is_refused(modality, order_factory):
    order = order_factory()
    status = modality().set(new_uid(), completed([(new_uid(), [])]))
    assert status.Status == 0x0112
    _nothing_changed(order)


def test_an_n_set_after_completion_may_no_longer_update(modality, order_factory):
    order = order_factory()
    ct, uid = modality(), new_uid()
    ct.create(uid, in_progress(order))
    assert ct.set(uid, completed([(new_uid(), [])])).Status == 0x0000
    before = PerformedProcedureStep.objects.get().attributes
    status = ct.set(uid, completed([(new_uid(), [])], status="DISCONTINUED"))
    assert status.Status == 0x0110
    assert status.ErrorID == 0xA710
    assert "no longer be updated" in status.ErrorComment
    assert PerformedProcedureStep.objects.get().attributes == before
    assert state(order) == Order.State.COMPLETED


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"PatientID": "SOMEONE-ELSE"}, 0x0106),  # not allowed in an N-SET
        ({"PerformedProcedureStepStatus": "FINISHED"}, 0x0106),
        ({"PerformedProcedureStepEndTime": ""}, 0x0121),  # COMPLETED needs its end time
    ],
)
def test_a_bad_n_set_is_refused_and_changes_nothing(order_factory, change, status):
    order = order_factory()
    uid = new_uid()
    create_directly(order, in_progress(order), uid)
    before = PerformedProcedureStep.objects.get().attributes
    ds = completed([(new_uid(), [])])
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    assert set_directly(order, uid, ds) == status
    step = PerformedProcedureStep.objects.get()
    assert step.state == PerformedProcedureStep.State.IN_PROGRESS
    assert step.attributes == before
    assert state(order) == Order.State.IN_PROGRESS


def test_completed_without_performed_series_is_refused(order_factory):
    order = order_factory()
    uid = new_uid()
    create_directly(order, in_progress(order), uid)
    assert set_directly(order, uid, completed([])) == 0x0121
    assert state(order) == Order.State.IN_PROGRESS


def test_another_institutions_modality_cannot_touch_the_step(modality, order_factory):
    order = order_factory()
    uid = new_uid()
    modality("ALPHA_CT").create(uid, in_progress(order))
    assert modality("BRAVO_CT").set(uid, completed([(new_uid(), [])])).Status == 0x0112
    assert state(order) == Order.State.IN_PROGRESS


def test_an_intermediate_n_set_keeps_the_step_in_progress(order_factory):
    order = order_factory()
    uid = new_uid()
    create_directly(order, in_progress(order), uid)
    ds = Dataset()
    ds.PerformedProcedureStepDescription = "CT chest, 2 series"
    assert set_directly(order, uid, ds) == 0x0000
    step = PerformedProcedureStep.objects.get()
    assert step.state == PerformedProcedureStep.State.IN_PROGRESS
    assert Dataset.from_json(step.attributes).PerformedProcedureStepDescription == "CT chest, 2 series"
    assert AuditEvent.objects.filter(action="worklist.mpps.create").count() == 1
    assert AuditEvent.objects.get(action="worklist.mpps.update").detail == {
        "attributes": ["PerformedProcedureStepDescription"]
    }


def test_a_late_mpps_for_a_completed_order_is_kept_as_history(order_factory):
    from django.contrib.contenttypes.models import ContentType

    from pacs_cloud.models import Transition
    from worklist.actions import do_complete_order

    order = order_factory()
    do_complete_order(order, actor_label="archive", reason="study complete")
    uid = new_uid()
    assert create_directly(order, in_progress(order), uid) == 0x0000
    step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert step.order == order and step.state == PerformedProcedureStep.State.IN_PROGRESS
    assert state(order) == Order.State.COMPLETED
    event = AuditEvent.objects.get(action="worklist.mpps.create", object_id=str(step.pk))
    assert event.detail["after_order_completed"] is True

    assert set_directly(order, uid, completed([(new_uid(), [new_uid()])])) == 0x0000
    step.refresh_from_db()
    assert step.state == PerformedProcedureStep.State.COMPLETED
    assert state(order) == Order.State.COMPLETED
    order_rows = Transition.objects.filter(content_type=ContentType.objects.get_for_model(Order), object_id=order.pk)
    assert [(t.source, t.target) for t in order_rows] == [("scheduled", "completed")]
    step_rows = Transition.objects.filter(content_type=ContentType.objects.get_for_model(step), object_id=step.pk)
    assert [(t.source, t.target) for t in step_rows] == [("in_progress", "completed")]


def test_an_n_create_for_a_discontinued_order_is_still_refused(order_factory):
    from worklist.actions import do_discontinue_order

    order = order_factory()
    create_directly(order, in_progress(order))
    PerformedProcedureStep.objects.all().delete()
    order = do_discontinue_order(order, reason="patient unwell")
    assert create_directly(order, in_progress(order)) == 0x0110
    assert PerformedProcedureStep.objects.count() == 0
