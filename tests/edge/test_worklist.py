"""The edge's worklist with real processes: findscu -W while the cloud is down, MPPS relayed when it returns."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from pacs_cloud.lib.uids import new_uid
from tests.worklist.conftest import local, make_site, today
from tests.worklist.test_mpps import completed, in_progress
from worklist import actions
from worklist.models import Order, PerformedProcedureStep

pytestmark = [pytest.mark.dcmtk]

STEP = "ScheduledProcedureStepSequence[0]."


def findscu(port: int, keys: list[str], out: Path) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-W", "-aet", "ALPHA_CT", "-aec", "PACSEDGE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(port)], capture_output=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=30
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


@pytest.fixture
def orders(tenants, cloud):
    site = make_site(tenants.a.institution, "ALPHA")
    made = []
    for hour, name in [(9, "WANG^FANG"), (11, "LI^NA")]:
        patient = actions.do_register_patient(
            tenants.a.institution, name=name, patient_id=f"EDGE{hour}", allow_possible_duplicate=True
        )
        made.append(
            actions.do_create_order(
                tenants.a.institution,
                patient=patient,
                procedure=site.ct,
                station=site.ct_station,
                scheduled_at=local(today(), hour),
            )
        )
    tomorrow = actions.do_register_patient(
        tenants.a.institution, name="LATER^ONE", patient_id="EDGE99", allow_possible_duplicate=True
    )
    actions.do_create_order(
        tenants.a.institution,
        patient=tomorrow,
        procedure=site.ct,
        station=site.ct_station,
        scheduled_at=local(today() + dt.timedelta(days=1), 9),
    )
    return made


KEYS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    f"{STEP}ScheduledStationAETitle=ALPHA_CT",
    f"{STEP}ScheduledProcedureStepStartDate={today():%Y%m%d}",
    f"{STEP}ScheduledProcedureStepStartTime",
    f"{STEP}Modality=CT",
    f"{STEP}ScheduledProcedureStepID",
]


def test_findscu_gets_the_days_orders_from_the_edge_while_the_cloud_is_down(
    orders, start_edge, cloud, tenants, tmp_path
):
    edge = start_edge()
    edge.wait_for(lambda s: s["worklist_orders"] == 3)
    # A change in the cloud reaches the replica with the next sync: a cancelled exam leaves it.
    cancelled = actions.do_register_patient(
        tenants.a.institution, name="GONE^AWAY", patient_id="EDGE77", allow_possible_duplicate=True
    )
    site_order = orders[0]
    gone = actions.do_create_order(
        tenants.a.institution,
        patient=cancelled,
        procedure=site_order.procedure,
        station=site_order.station,
        scheduled_at=local(today(), 10),
    )
    edge.wait_for(lambda s: s["worklist_orders"] == 4)
    actions.do_cancel_order(gone, reason="patient left", actor=tenants.a.technologist)
    edge.wait_for(lambda s: s["worklist_orders"] == 3)
    cloud.stop()
    found = findscu(edge.port, KEYS, tmp_path / "rsp")
    assert [str(ds.AccessionNumber) for ds in found] == [o.accession_number for o in orders]
    assert [str(ds.PatientName) for ds in found] == ["WANG^FANG", "LI^NA"]
    assert str(found[0].StudyInstanceUID) == orders[0].study_instance_uid
    # Wild cards go through the same matching as in the cloud.
    only_li = findscu(edge.port, [*KEYS[1:], "PatientName=LI*"], tmp_path / "li")
    assert [str(ds.AccessionNumber) for ds in only_li] == [orders[1].accession_number]


def test_mpps_sent_while_the_cloud_is_down_reaches_it_when_it_returns(orders, start_edge, cloud, tmp_path):
    edge = start_edge()
    edge.wait_for(lambda s: s["worklist_orders"] >= 3)
    cloud.stop()
    order = Order.objects.select_related("patient").get(pk=orders[0].pk)
    ae = AE(ae_title="ALPHA_CT")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", edge.port, ae_title="PACSEDGE")
    assert assoc.is_established
    uid = new_uid()
    status, _ = assoc.send_n_create(in_progress(order), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    # The edge's worklist shows the exam started at once, the cloud still out of reach.
    started = findscu(edge.port, [*KEYS, f"{STEP}ScheduledProcedureStepStatus"], tmp_path / "started")
    by_accession = {str(ds.AccessionNumber): ds for ds in started}
    step = by_accession[order.accession_number].ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStatus == "STARTED"
    status, _ = assoc.send_n_set(completed([(new_uid(), [new_uid()])]), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    assoc.release()
    assert edge.status()["mpps_waiting"] == 2
    # Completed: the exam has left the edge's worklist.
    left = findscu(edge.port, KEYS, tmp_path / "left")
    assert order.accession_number not in {str(ds.AccessionNumber) for ds in left}
    time.sleep(0.5)
    assert not PerformedProcedureStep.objects.filter(sop_instance_uid=uid).exists()
    cloud.start()
    edge.wait_for(lambda s: s["mpps_waiting"] == 0)
    step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert step.state == PerformedProcedureStep.State.COMPLETED
    order.refresh_from_db()
    assert order.state == Order.State.COMPLETED
    assert edge.status()["mpps_refused"] == 0


def test_the_edge_checks_mpps_like_the_cloud_while_the_cloud_is_down(orders, start_edge, cloud):
    edge = start_edge()
    edge.wait_for(lambda s: s["worklist_orders"] >= 3)
    cloud.stop()
    first, second = (Order.objects.select_related("patient").get(pk=o.pk) for o in orders)
    ae = AE(ae_title="ALPHA_CT")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", edge.port, ae_title="PACSEDGE")
    assert assoc.is_established
    try:
        # N-SET of a step nobody created: no such object.
        status, _ = assoc.send_n_set(completed([(new_uid(), [new_uid()])]), ModalityPerformedProcedureStep, new_uid())
        assert status.Status == 0x0112
        uid = new_uid()
        status, _ = assoc.send_n_create(in_progress(first), ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        # The same SOP Instance UID again: duplicate.
        status, _ = assoc.send_n_create(in_progress(first), ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0111
        # A step created without its Type 1 attributes, as the cloud refuses it.
        bare = in_progress(second)
        del bare.PerformedStationAETitle
        status, _ = assoc.send_n_create(bare, ModalityPerformedProcedureStep, new_uid())
        assert status.Status == 0x0120
        # COMPLETED without the performed series: refused, the step stays in progress.
        incomplete = completed([])
        status, _ = assoc.send_n_set(incomplete, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0121
        status, _ = assoc.send_n_set(completed([(new_uid(), [new_uid()])]), ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        # After COMPLETED the step may no longer be updated.
        status, _ = assoc.send_n_set(completed([], status="DISCONTINUED"), ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0110
        assert status.ErrorID == 0xA710
        # A discontinued step is final too.
        other = new_uid()
        status, _ = assoc.send_n_create(in_progress(second), ModalityPerformedProcedureStep, other)
        assert status.Status == 0x0000
        status, _ = assoc.send_n_set(completed([], status="DISCONTINUED"), ModalityPerformedProcedureStep, other)
        assert status.Status == 0x0000
        status, _ = assoc.send_n_set(completed([(new_uid(), [new_uid()])]), ModalityPerformedProcedureStep, other)
        assert status.Status == 0x0110
    finally:
        assoc.release()
    # Only what the edge accepted waits for the cloud: two creates and two sets.
    assert edge.status()["mpps_waiting"] == 4
    cloud.start()
    edge.wait_for(lambda s: s["mpps_waiting"] == 0)
    assert edge.status()["mpps_refused"] == 0
    assert PerformedProcedureStep.objects.get(sop_instance_uid=uid).state == PerformedProcedureStep.State.COMPLETED
    assert PerformedProcedureStep.objects.get(sop_instance_uid=other).state == PerformedProcedureStep.State.DISCONTINUED
