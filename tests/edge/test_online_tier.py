"""The online tier: eviction rules (in process), and Query/Retrieve through the edge with dcmtk."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pydicom
import pytest

from archive.edge.gateway import Gateway
from archive.models import DicomNode
from tests.archive.conftest import dcmtk, differences
from tests.conftest import free_port

from .test_forwarding import series, storescu


def keep(gateway: Gateway, study: str, uid: str, *, content: bytes = b"x" * 100, received_at: float | None = None):
    path = gateway.online_dir / study / "1" / f"{uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    gateway.outbox.record(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=study,
        series_instance_uid="1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=str(path),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    if received_at is not None:
        with gateway.outbox.transaction() as db:
            db.execute("UPDATE instances SET received_at = ? WHERE sop_instance_uid = ?", (received_at, uid))
    return path, hashlib.sha256(content).hexdigest()


@pytest.fixture
def gateway(tmp_path, settings):
    settings.EDGE_ONLINE_MAX_AGE_DAYS = 1
    settings.EDGE_ONLINE_MAX_GB = 1
    settings.EDGE_READ_GUARD_MINUTES = 10
    made = Gateway(data_dir=tmp_path, cloud_url="http://127.0.0.1:9", token="unused")
    yield made
    made.outbox.close()


def states(gateway: Gateway) -> dict[str, str]:
    return dict(gateway.outbox.query("SELECT sop_instance_uid, state FROM instances"))


def test_only_instances_the_cloud_confirmed_are_evicted(gateway):
    old = time.time() - 3 * 86400
    sent, sent_sha = keep(gateway, "1.1", "1.1.1", received_at=old)
    waiting, _ = keep(gateway, "1.1", "1.1.2", content=b"y" * 100, received_at=old)
    recent, recent_sha = keep(gateway, "1.2", "1.2.1")
    # The cloud confirmed other content for 1.1.2 than the edge holds: not forwarded.
    gateway.outbox.mark_forwarded({"1.1.1": sent_sha, "1.1.2": "0" * 64, "1.2.1": recent_sha})
    assert gateway.tier.evict() == 1
    assert states(gateway) == {"1.1.1": "evicted", "1.1.2": "pending", "1.2.1": "forwarded"}
    assert not sent.exists() and waiting.exists() and recent.exists()


def test_the_size_limit_evicts_the_oldest_studies_first(gateway, settings):
    gateway.tier.max_bytes = 250
    for number in range(3):
        _, sha = keep(gateway, f"2.{number}", f"2.{number}.1", received_at=time.time() - 100 + number)
        gateway.outbox.mark_forwarded({f"2.{number}.1": sha})
    assert gateway.tier.evict() == 1
    assert states(gateway) == {"2.0.1": "evicted", "2.1.1": "forwarded", "2.2.1": "forwarded"}


def test_a_study_being_read_or_read_recently_is_not_evicted(gateway):
    old = time.time() - 3 * 86400
    _, sha = keep(gateway, "3.1", "3.1.1", received_at=old)
    gateway.outbox.mark_forwarded({"3.1.1": sha})
    with gateway.tier.reading({"3.1"}):
        assert gateway.tier.evict() == 0
    # Just read: guarded for EDGE_READ_GUARD_MINUTES.
    assert gateway.tier.evict() == 0
    assert gateway.tier.evict(now=time.time() + 11 * 60) == 1


@pytest.mark.dcmtk
def test_a_study_evicted_from_the_online_tier_is_retrieved_through_the_edge_by_movescu(
    start_edge, cloud, tenants, tmp_path
):
    destination = free_port()
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_WS", host="127.0.0.1", port=destination)
    edge = start_edge(EDGE_ONLINE_MAX_GB="0", EDGE_TIER_SWEEP_SECONDS="0.3", EDGE_READ_GUARD_MINUTES="0")
    study, uids = series(tmp_path / "ct", 5, size=16)
    assert storescu(edge, tmp_path / "ct", extra=("+sd",)).returncode == 0
    edge.wait_for(lambda s: s["evicted"] == 5)
    assert not list((edge.data_dir / "edge" / "online" / study).rglob("*.dcm"))
    received = tmp_path / "received"
    received.mkdir()
    result = dcmtk(
        "movescu", "-S", "-aet", "ALPHA_WS", "-aec", "PACSEDGE", "-aem", "ALPHA_WS", "--port", str(destination),
        "-od", str(received), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(edge.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in received.iterdir()}
    assert set(got) == set(uids)
    for original in sorted((tmp_path / "ct").iterdir()):
        uid = pydicom.dcmread(original).SOPInstanceUID
        assert differences(original, got[uid]) == []
    assert edge.status()["restored"] == 5
    # C-GET of the same study, over the caller's own association, after it was evicted again.
    edge.wait_for(lambda s: s["evicted"] == 5)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    result = dcmtk(
        "getscu", "-S", "-aet", "ALPHA_WS", "-aec", "PACSEDGE", "-od", str(fetched),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(edge.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {pydicom.dcmread(p).SOPInstanceUID for p in fetched.iterdir()} == set(uids)


@pytest.mark.dcmtk
def test_findscu_finds_resident_studies_at_the_edge(start_edge, tmp_path):
    edge = start_edge()
    study, _ = series(tmp_path / "ct", 3, patient_id="FIND1", accession="ACCF1")
    assert storescu(edge, tmp_path / "ct", extra=("+sd",)).returncode == 0
    out = tmp_path / "found"
    out.mkdir()
    result = dcmtk(
        "findscu", "-S", "-aet", "ALPHA_CT", "-aec", "PACSEDGE", "-X", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=FIND1", "-k", "StudyInstanceUID",
        "-k", "AccessionNumber", "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(edge.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = [pydicom.dcmread(p) for p in sorted(Path(out).glob("rsp*.dcm"))]
    assert [(str(d.StudyInstanceUID), str(d.AccessionNumber), int(d.NumberOfStudyRelatedInstances)) for d in found] == [
        (study, "ACCF1", 3)
    ]


class RefusingCloud:
    """The cloud as a proxy in front of it may answer: 413 for any request carrying ``too_big``."""

    def __init__(self, too_big: str) -> None:
        self.too_big = too_big
        self.requests: list[list[str]] = []

    def stow(self, paths):
        from archive.edge.client import CloudRefused

        names = [p.stem for p in paths]
        self.requests.append(names)
        if self.too_big in names:
            raise CloudRefused(413, "Request Entity Too Large")
        items = [{"00081155": {"vr": "UI", "Value": [n]}} for n in names]
        return 200, {"00081199": {"vr": "SQ", "Value": items}}

    def confirm(self, uids):
        return {uid: hashlib.sha256(f"content {uid}".encode()).hexdigest() for uid in uids}


def test_a_request_the_cloud_refuses_whole_is_split_and_only_the_culprit_is_quarantined(gateway):
    for uid in ("4.1", "4.2", "4.3"):
        keep(gateway, "4", uid, content=f"content {uid}".encode())
    gateway.forwarder.cloud = RefusingCloud("4.2")
    gateway.forwarder.forward(gateway.outbox.due(10, set()))
    assert states(gateway) == {"4.1": "forwarded", "4.2": "quarantined", "4.3": "forwarded"}
    assert "413" in gateway.outbox.quarantined()[0][2]
