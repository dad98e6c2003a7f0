"""MPPS through a real edge: relayed at once, beside the images, and late steps kept as history.

A modality's MPPS IN PROGRESS must reach the cloud well within the demo's
stability window, or the study completes (and its exam with it) before the
cloud hears the exam started; a step that still comes after that is the
exam's history, not an error.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path

import pytest
from django.utils import timezone
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from archive.actions import do_complete_stable_studies
from archive.demo import DEMO_STABILITY_SECONDS
from archive.models import ArchivePolicy, Study
from pacs_cloud.lib.uids import new_uid
from tests.archive.conftest import make_ct, write
from tests.worklist.conftest import local, make_site, today
from tests.worklist.test_mpps import completed, in_progress
from worklist import actions
from worklist.models import Order, PerformedProcedureStep

pytestmark = [pytest.mark.dcmtk]

# The edge's default period for its worklist jobs: the relay must not wait for it.
PRODUCTION_SYNC_SECONDS = "30"


@pytest.fixture
def orders(tenants, cloud):
    institution = tenants.a.institution
    ArchivePolicy.objects.create(institution=institution, stability_seconds=DEMO_STABILITY_SECONDS)
    site = make_site(institution, "ALPHA")
    made = []
    for hour, name in [(9, "ZHOU^MIN"), (10, "SUN^LI")]:
        patient = actions.do_register_patient(
            institution, name=name, patient_id=f"RELAY{hour}", allow_possible_duplicate=True
        )
        made.append(
            actions.do_create_order(
                institution,
                patient=patient,
                procedure=site.ct,
                station=site.ct_station,
                scheduled_at=local(today(), hour),
            )
        )
    return made


def images(order: Order, folder: Path, count: int) -> tuple[str, list[str]]:
    """``count`` images of ``order``'s study as its modality makes them; the series and SOP UIDs."""
    folder.mkdir(parents=True)
    series_uid, sops = new_uid(), []
    for number in range(count):
        ds = make_ct(
            study_uid=order.study_instance_uid,
            series_uid=series_uid,
            patient_id=order.patient.patient_id,
            patient_name=order.patient.name,
            accession=order.accession_number,
            birth_date="",
            sex="",
            instance_number=number + 1,
            size=256,
            seed=number,
        )
        write(ds, folder / f"{number:04d}.dcm")
        sops.append(ds.SOPInstanceUID)
    return series_uid, sops


def storescu(edge, folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["storescu", "-aet", "ALPHA_CT", "-aec", "PACSEDGE", "+sd", "127.0.0.1", str(edge.port), str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )


def eventually(condition, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def state(order: Order) -> str:
    return Order.objects.get(pk=order.pk).state


def test_mpps_reaches_the_cloud_while_images_flow_and_late_steps_are_history(orders, start_edge, tmp_path):
    first, second = (Order.objects.select_related("patient").get(pk=o.pk) for o in orders)
    edge = start_edge(EDGE_SYNC_SECONDS=PRODUCTION_SYNC_SECONDS)
    series_a, sops_a = images(first, tmp_path / "a", 60)
    series_b, sops_b = images(second, tmp_path / "b", 3)

    ae = AE(ae_title="ALPHA_CT")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", edge.port, ae_title="PACSEDGE")
    assert assoc.is_established
    # The scan starts: images go to the edge while the modality reports the step.
    sending = storescu(edge, tmp_path / "a")
    step_a = new_uid()
    assert assoc.send_n_create(in_progress(first), ModalityPerformedProcedureStep, step_a)[0].Status == 0x0000
    took = eventually(lambda: PerformedProcedureStep.objects.filter(sop_instance_uid=step_a).exists(), 5)
    assert took < DEMO_STABILITY_SECONDS / 2
    assert state(first) == Order.State.IN_PROGRESS
    assert sending.wait(timeout=60) == 0, sending.stdout.read().decode(errors="replace")

    # The second exam's images arrive and its study completes before any of its MPPS does.
    assert storescu(edge, tmp_path / "b").wait(timeout=60) == 0
    edge.wait_for(lambda s: s["forwarded"] == 63 and s["outbox_depth"] == 0)
    later = timezone.now() + dt.timedelta(seconds=DEMO_STABILITY_SECONDS + 1)
    assert do_complete_stable_studies(now=later) == 2
    assert Study.objects.get(study_instance_uid=second.study_instance_uid).completed_at is not None
    assert state(second) == Order.State.COMPLETED
    # The first exam stays in progress: its modality has not said it finished.
    assert state(first) == Order.State.IN_PROGRESS

    step_b = new_uid()
    assert assoc.send_n_create(in_progress(second), ModalityPerformedProcedureStep, step_b)[0].Status == 0x0000
    for uid, series, sops in [(step_b, series_b, sops_b), (step_a, series_a, sops_a)]:
        status, _ = assoc.send_n_set(completed([(series, sops)]), ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
    assoc.release()

    eventually(lambda: edge.status()["mpps_waiting"] == 0, 5)
    assert edge.status()["mpps_refused"] == 0, edge.output()[-3000:]
    late = PerformedProcedureStep.objects.get(sop_instance_uid=step_b)
    assert late.order_id == second.pk and late.state == PerformedProcedureStep.State.COMPLETED
    assert state(second) == Order.State.COMPLETED
    assert PerformedProcedureStep.objects.get(sop_instance_uid=step_a).state == PerformedProcedureStep.State.COMPLETED
    assert state(first) == Order.State.COMPLETED
