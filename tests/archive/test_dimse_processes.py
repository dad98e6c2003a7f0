"""Two modalities sending at once to the DICOM service running as several processes on one port.

The real ``manage.py dicom_server --processes 2`` on the test database; two
pynetdicom senders, each its own series, connect and send at the same time.
Each must be answered Success for every instance, and everything must be
indexed and stored; each process must serve exactly one of the two
associations (the process holding each connection is read from /proc).
A service process that dies is started again and takes its share of the
associations that follow.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from archive.models import DicomNode, Instance
from tests.archive.conftest import make_ct
from tests.dicom_service import start_dicom_service


def service_processes(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return sorted(found)


def socket_inode(service_port: int, peer_port: int) -> str:
    """The inode of the service's end of the TCP connection from ``peer_port`` (/proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local == service_port and remote == peer_port:
                return fields[9]
    raise AssertionError(f"no connection from port {peer_port} to {service_port}")


def holder(pids: list[int], service_port: int, assoc) -> int:
    """The one process among ``pids`` holding the service's end of ``assoc``'s connection."""
    wanted = f"socket:[{socket_inode(service_port, assoc.dul.socket.socket.getsockname()[1])}]"
    holders = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == wanted:
                    holders.append(pid)
                    break
            except OSError:
                continue
    assert len(holders) == 1, f"{wanted} is held by {holders} of {pids}"
    return holders[0]


@pytest.fixture
def service(tenants, transactional_db, storage_dir, tmp_path):
    for title in ("CT_ONE", "MR_TWO"):
        DicomNode.objects.create(institution=tenants.a.institution, ae_title=title, host="127.0.0.1")
    process, port, log = start_dicom_service(tmp_path, "--processes", "2")
    try:
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def workers_of(process, exclude: int = 0) -> list[int]:
    deadline = time.monotonic() + 30
    while len(workers := service_processes(process.pid)) < 2 or exclude in workers:
        assert time.monotonic() < deadline, "the service processes did not start"
        time.sleep(0.05)
    return workers


def test_two_associations_at_once_are_served_one_by_each_process_and_store_everything(service):
    process, port = service
    workers = workers_of(process)
    series = {}
    for title in ("CT_ONE", "MR_TWO"):
        study, series_uid = generate_uid(), generate_uid()
        series[title] = [
            make_ct(study_uid=study, series_uid=series_uid, instance_number=n + 1, size=64, seed=n, patient_id=title)
            for n in range(30)
        ]
    statuses: dict[str, list[int]] = {title: [] for title in series}
    associations = {}
    both_sending = threading.Barrier(3)

    def send(title: str) -> None:
        ae = AE(ae_title=title)
        ae.add_requested_context(CTImageStorage)
        assoc = associations[title] = ae.associate("127.0.0.1", port, ae_title="PACSCLOUD")
        try:
            assert assoc.is_established
            for number, ds in enumerate(series[title]):
                if number == 5:
                    both_sending.wait(30)  # both associations are sending now
                    both_sending.wait(30)  # and the test has looked at who serves them
                status = assoc.send_c_store(ds)
                statuses[title].append(status.Status if status else -1)
        finally:
            assoc.release()

    # Both connect at once, as two modalities would.
    senders = [threading.Thread(target=send, args=(title,), daemon=True) for title in series]
    for sender in senders:
        sender.start()
    both_sending.wait(30)
    try:
        served_by = {title: holder(workers, port, assoc) for title, assoc in associations.items()}
    finally:
        both_sending.wait(30)
    for sender in senders:
        sender.join(60)

    assert sorted(served_by.values()) == workers, served_by
    for title, sent in series.items():
        assert statuses[title] == [0x0000] * len(sent), title
        uids = {str(ds.SOPInstanceUID) for ds in sent}
        assert Instance.objects.filter(sop_instance_uid__in=uids).count() == len(uids), title

    # A service process that dies is replaced, and the new one takes its share:
    # four associations open at once are served two by each process.
    os.kill(workers[0], signal.SIGKILL)
    workers = workers_of(process, exclude=workers[0])
    ae = AE(ae_title="CT_ONE")
    ae.add_requested_context(Verification)
    opened = [ae.associate("127.0.0.1", port, ae_title="PACSCLOUD") for _ in range(4)]
    try:
        assert all(assoc.is_established for assoc in opened)
        shares = Counter(holder(workers, port, assoc) for assoc in opened)
        assert sorted(shares.items()) == [(pid, 2) for pid in workers], shares
        assert all(assoc.send_c_echo().Status == 0x0000 for assoc in opened)
    finally:
        for assoc in opened:
            assoc.release()
