"""The forwarder and the cloud's "out of resources": too large is for good, a passing shortage is bounded."""

from __future__ import annotations

import io
import sqlite3

import pydicom
import pytest

from archive import dicomweb
from archive.ingest import IngestError
from tests.archive.conftest import make_ct, write
from tests.edge.test_forwarding import outbox_rows, storescu

pytestmark = [pytest.mark.dcmtk]


def refusals(edge, uid: str) -> int:
    with sqlite3.connect(edge.data_dir / "edge" / "outbox.sqlite3") as db:
        return db.execute("SELECT refusals FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()[0]


def test_an_instance_over_the_clouds_size_limit_is_quarantined_at_once(start_edge, cloud, settings, tmp_path):
    settings.MAX_INSTANCE_BYTES = 20_000
    edge = start_edge(MAX_INSTANCE_BYTES="10000000", EDGE_REFUSED_MAX_ATTEMPTS="1000")
    small, large = make_ct(patient_id="S1", size=8), make_ct(patient_id="S2", size=128)
    sent = storescu(edge, write(small, tmp_path / "small.dcm"), write(large, tmp_path / "large.dcm"))
    assert sent.returncode == 0
    status = edge.wait_for(lambda s: s["quarantined"] == 1 and s["forwarded"] == 1, timeout=30)
    [item] = status["quarantine"]
    assert item["sop_instance_uid"] == large.SOPInstanceUID
    assert "0xA700" in item["reason"] and "20000-byte limit" in item["reason"]
    # For good at the first answer: never retried.
    assert refusals(edge, large.SOPInstanceUID) == 0
    assert outbox_rows(edge)[small.SOPInstanceUID][0] == "forwarded"


def test_a_cloud_out_of_resources_is_retried_then_the_instance_quarantined_with_the_last_reason(
    start_edge, cloud, monkeypatch, tmp_path
):
    def storage_failing(data: bytes, **kwargs):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        raise IngestError(
            "the archive's storage is full",
            code="storage",
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
        )

    monkeypatch.setattr(dicomweb, "store_part10", storage_failing)
    edge = start_edge(EDGE_REFUSED_MAX_ATTEMPTS="3")
    ds = make_ct(patient_id="R1")
    assert storescu(edge, write(ds, tmp_path / "r1.dcm")).returncode == 0
    status = edge.wait_for(lambda s: s["quarantined"] == 1, timeout=60)
    [item] = status["quarantine"]
    assert item["sop_instance_uid"] == ds.SOPInstanceUID
    assert "0xA700" in item["reason"] and "storage is full" in item["reason"] and "3 times" in item["reason"]
    # Retried before: two answers "out of resources" counted, the third quarantined it.
    assert refusals(edge, ds.SOPInstanceUID) == 2
    assert outbox_rows(edge)[ds.SOPInstanceUID][0] == "quarantined"
