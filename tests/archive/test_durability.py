"""A crash of the DICOM service loses nothing a sender was told was stored.

The real ``manage.py dicom_server`` process on the test database receives a
series from a pynetdicom sender and is killed (SIGKILL: no shutdown, no
flush) while the series is still arriving. Every instance it had answered
with Success must then be in the index and in storage, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from archive.models import DicomNode, Instance
from archive.storage import get_storage
from tests.archive.conftest import make_ct
from tests.dicom_service import start_dicom_service


@pytest.fixture
def dicom_service(tenants, transactional_db, storage_dir, tmp_path):
    """``manage.py dicom_server`` in its own process, on the test database and storage; CRASH_CT may send."""
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="CRASH_CT", host="127.0.0.1")
    # the service as it runs in production: several processes on one port
    process, port, _ = start_dicom_service(tmp_path, DICOM_SERVICE_PROCESSES="2")
    yield process, port
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_every_instance_acknowledged_before_a_crash_is_indexed_and_stored(dicom_service):
    process, port = dicom_service
    study, series = generate_uid(), generate_uid()
    sent = {}
    for number in range(400):
        ds = make_ct(study_uid=study, series_uid=series, instance_number=number + 1, size=128, seed=number)
        sent[str(ds.SOPInstanceUID)] = ds
    acknowledged: list[str] = []
    answered = threading.Event()
    ended = threading.Event()

    def send() -> None:
        ae = AE(ae_title="CRASH_CT")
        # After the crash the sender may wait for an answer that never comes: not pynetdicom's 30 s.
        ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSCLOUD")
        try:
            assert assoc.is_established
            for uid, ds in sent.items():
                if not assoc.is_established:
                    break
                status = assoc.send_c_store(ds)
                if status and status.Status == 0x0000:
                    acknowledged.append(uid)
                    if len(acknowledged) >= 25:
                        answered.set()
        finally:
            if assoc.is_established:
                assoc.release()
            ended.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert answered.wait(120), "the service acknowledged too few instances before the crash"
    os.killpg(process.pid, signal.SIGKILL)  # mid-series: no shutdown, nothing flushed on the way out
    process.wait(timeout=30)
    assert ended.wait(60)
    sender.join(10)

    assert 25 <= len(acknowledged) < len(sent), "the crash did not land mid-series"
    indexed = {i.sop_instance_uid: i for i in Instance.objects.filter(sop_instance_uid__in=acknowledged)}
    assert sorted(indexed) == sorted(acknowledged)
    storage = get_storage()
    for uid in acknowledged:
        instance = indexed[uid]
        with storage.open(instance.storage_key) as handle:
            body = handle.read()
        assert hashlib.sha256(body).hexdigest() == instance.sha256
        assert len(body) == instance.size
        assert bytes(sent[uid].PixelData) in body
