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
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from archive.models import DicomNode, Instance
from archive.storage import get_storage
from tests.archive.conftest import make_ct
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the crash test runs the DICOM service as its own process on a shared PostgreSQL database")
    user, host, port = db.get("USER") or "postgres", db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def dicom_service(tenants, transactional_db, storage_dir, tmp_path):
    """``manage.py dicom_server`` in its own process, on the test database and storage; CRASH_CT may send."""
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="CRASH_CT", host="127.0.0.1")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(
        DATABASE_URL=_database_url(),
        PACS_DATA_DIR=str(tmp_path / "service"),
        STORAGE_URL=settings.STORAGE_URL,
        DJANGO_SETTINGS_MODULE="pacs_cloud.settings",
        LOG_LEVEL="WARNING",
        DICOM_SERVICE_PROCESSES="2",  # the service as it runs in production: several processes on one port
    )
    log = open(tmp_path / "dicom_server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "dicom_server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (tmp_path / "dicom_server.log").read_text()[-3000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline, "the DICOM service did not start listening"
        time.sleep(0.2)
    yield process, port
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    log.close()


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
