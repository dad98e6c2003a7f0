"""Store-and-forward with real processes: dcmtk storescu -> the edge (a subprocess) -> the cloud (a live server)."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from archive.models import EdgeQuarantine, Instance
from pacs_cloud.authentication import issue_token
from tests.archive.conftest import dcmtk, differences, make_ct, sample_path, with_fresh_uids, write

pytestmark = [pytest.mark.dcmtk]


def storescu(edge, *paths: Path | str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return dcmtk(
        "storescu", "-aet", "ALPHA_CT", "-aec", "PACSEDGE", *extra, "127.0.0.1", str(edge.port), *map(str, paths)
    )


def series(folder: Path, count: int, *, size: int = 8, **fields) -> tuple[str, list[str]]:
    """``count`` small CT images of one new study in ``folder``; returns the study UID and the SOP UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series_uid = generate_uid(), generate_uid()
    uids = []
    for number in range(count):
        ds = make_ct(
            study_uid=study, series_uid=series_uid, instance_number=number + 1, size=size, seed=number, **fields
        )
        write(ds, folder / f"{number:05d}.dcm")
        uids.append(ds.SOPInstanceUID)
    return study, uids


def outbox_rows(edge) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(edge.data_dir / "edge" / "outbox.sqlite3") as db:
        return {
            uid: (state, sha) for uid, state, sha in db.execute("SELECT sop_instance_uid, state, sha256 FROM instances")
        }


def test_storescu_to_edge_to_cloud_is_found_by_qido_byte_identical(start_edge, cloud, tenants, tmp_path):
    edge = start_edge()
    assert dcmtk("echoscu", "-aet", "ALPHA_CT", "-aec", "PACSEDGE", "127.0.0.1", str(edge.port)).returncode == 0
    study, uids = series(tmp_path / "ct", 6, size=32)
    others = [
        with_fresh_uids(sample_path(name), tmp_path / f"{name}", PatientID=f"S{n}")
        for n, name in enumerate(["CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
    ]
    sent = storescu(edge, tmp_path / "ct", *others[:2], extra=("+sd",))
    assert sent.returncode == 0, sent.stderr
    assert storescu(edge, others[2], extra=("-xy",)).returncode == 0  # JPEG Baseline, kept as sent
    total = len(uids) + len(others)
    edge.wait_for(lambda s: s["forwarded"] == total and s["outbox_depth"] == 0)

    _, key = issue_token(tenants.a.technologist, name="qido")
    client = requests.Session()
    client.headers["Authorization"] = f"Bearer {key}"
    found = client.get(f"{cloud.url}/dicomweb/instances", params={"StudyInstanceUID": study}).json()
    assert sorted(item["00080018"]["Value"][0] for item in found) == sorted(uids)
    local = outbox_rows(edge)
    for path in [*sorted((tmp_path / "ct").iterdir()), *others]:
        import pydicom

        ds = pydicom.dcmread(path)
        instance = Instance.objects.select_related("series__study").get(sop_instance_uid=ds.SOPInstanceUID)
        url = (
            f"{cloud.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        answer = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert answer.status_code == 200
        edge_copy = Path(edge.data_dir / "edge" / "online" / ds.StudyInstanceUID / ds.SeriesInstanceUID)
        edge_bytes = (edge_copy / f"{ds.SOPInstanceUID}.dcm").read_bytes()
        # The cloud's object is the edge's file, byte for byte, and the modality's data set.
        assert answer.content == edge_bytes
        assert hashlib.sha256(edge_bytes).hexdigest() == instance.sha256 == local[ds.SOPInstanceUID][1]
        assert differences(path, answer.content) == []


def test_an_unknown_modality_and_an_instance_with_a_bad_uid_are_refused(start_edge):
    edge = start_edge()
    result = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "PACSEDGE", "127.0.0.1", str(edge.port))
    assert result.returncode != 0
    ae = AE(ae_title="ALPHA_CT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", edge.port, ae_title="PACSEDGE")
    assert assoc.is_established
    ds = make_ct(study_uid="1.2.3.abc")
    status = assoc.send_c_store(ds)
    good = assoc.send_c_store(make_ct())
    assoc.release()
    assert status.Status == 0xC000
    assert good.Status == 0x0000
    assert len(outbox_rows(edge)) == 1


def test_the_cloud_stopped_during_a_500_instance_ingest_gets_every_instance_exactly_once(start_edge, cloud, tmp_path):
    edge = start_edge()
    study, uids = series(tmp_path / "ct", 500)
    first, rest = tmp_path / "first", tmp_path / "rest"
    first.mkdir()
    rest.mkdir()
    for number, path in enumerate(sorted((tmp_path / "ct").iterdir())):
        path.rename((first if number < 100 else rest) / path.name)
    # The first hundred are acknowledged and forwarded while the cloud answers ...
    assert storescu(edge, first, extra=("+sd",)).returncode == 0
    edge.wait_for(lambda s: s["forwarded"] >= 20, timeout=60)
    # ... the cloud stops while the modality is still sending the other four hundred.
    sender = subprocess.Popen(
        ["storescu", "-aet", "ALPHA_CT", "-aec", "PACSEDGE", "+sd", "127.0.0.1", str(edge.port), str(rest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    edge.wait_for(lambda s: s["outbox_depth"] + s["forwarded"] >= 110, timeout=60)
    cloud.stop()
    assert sender.poll() is None, "the cloud must stop during the ingest"
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    # Every instance the modality saw acknowledged is in the outbox; some wait for the cloud.
    rows = outbox_rows(edge)
    assert set(rows) == set(uids)
    waiting = edge.wait_for(lambda s: not s["cloud_reachable"] and s["outbox_depth"] > 0)
    assert waiting["forwarded"] < 500
    time.sleep(1)
    cloud.start()
    edge.wait_for(lambda s: s["forwarded"] == 500 and s["outbox_depth"] == 0, timeout=90)
    stored = list(
        Instance.objects.filter(series__study__study_instance_uid=study).values_list("sop_instance_uid", flat=True)
    )
    assert len(stored) == 500 and set(stored) == set(uids)


def test_an_edge_killed_between_acknowledging_and_forwarding_forwards_everything_after_a_restart(
    start_edge, cloud, tmp_path
):
    edge = start_edge()  # syncs its list of modalities while the cloud answers
    cloud.stop()
    study, uids = series(tmp_path / "ct", 50)
    assert storescu(edge, tmp_path / "ct", extra=("+sd",)).returncode == 0
    assert edge.status()["outbox_depth"] == 50
    edge.kill(signal.SIGKILL)
    assert not Instance.objects.filter(series__study__study_instance_uid=study).exists()
    cloud.start()
    edge = start_edge()
    edge.wait_for(lambda s: s["forwarded"] == 50 and s["outbox_depth"] == 0)
    stored = set(
        Instance.objects.filter(series__study__study_instance_uid=study).values_list("sop_instance_uid", flat=True)
    )
    assert stored == set(uids)


def test_an_instance_the_cloud_refuses_for_good_is_quarantined_and_reported(start_edge, cloud, tenants, tmp_path):
    edge = start_edge()
    first = make_ct(patient_id="Q1")
    assert storescu(edge, write(first, tmp_path / "first.dcm")).returncode == 0
    edge.wait_for(lambda s: s["forwarded"] == 1)
    # The same SOP instance again with other content: the cloud keeps its copy and refuses this one.
    changed = first.copy()
    changed.SeriesDescription = "CHANGED"
    assert storescu(edge, write(changed, tmp_path / "changed.dcm")).returncode == 0
    status = edge.wait_for(lambda s: s["quarantined"] == 1)
    assert status["quarantine"][0]["sop_instance_uid"] == first.SOPInstanceUID
    assert "0x0111" in status["quarantine"][0]["reason"]
    assert first.SOPInstanceUID in edge.page()
    deadline = time.monotonic() + 20
    while not EdgeQuarantine.objects.filter(sop_instance_uid=first.SOPInstanceUID).exists():
        assert time.monotonic() < deadline, "the quarantine never reached the cloud"
        time.sleep(0.2)
    # Nothing is dropped: the refused copy stays on the edge's disk.
    assert outbox_rows(edge)[first.SOPInstanceUID][0] == "quarantined"
