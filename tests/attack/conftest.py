"""Fixtures of the attack tests: the product's DICOM services as real processes, with short limits.

``dicom_service`` starts ``manage.py dicom_server`` on the test database
(calling AE ``ATTACK_CT`` from 127.0.0.1 is a configured node); ``edge`` an
enrolled edge gateway (``tests/edge/conftest.py``) whose modality ``ALPHA_CT``
may call it. Both run with the timeouts and limits of ``LIMITS``.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from archive.models import DicomNode
from tests.dicom_service import start_dicom_service
from tests.edge.conftest import cloud, edge_token, start_edge, storage_dir  # noqa: F401

LIMITS = {
    "DICOM_ACSE_TIMEOUT_SECONDS": "1",
    # Long enough that a sender starved of CPU on a loaded test machine is not cut off mid-association.
    "DICOM_NETWORK_TIMEOUT_SECONDS": "10",
    "DICOM_MAX_ASSOCIATIONS_PER_PEER": "4",
}
SERVICE_PROCESSES = 2


@dataclass
class Service:
    """A DICOM service under attack: where it listens, its process, and who may call it."""

    port: int
    pid: int
    calling_ae: str
    called_ae: str


def rss_bytes(pid: int) -> dict[int, int]:
    """Resident memory of ``pid`` and of every process below it (the cloud's service forks workers), by pid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        found[current] = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    return found


def settle(pid: int, processes: int) -> None:
    """Wait until the service's ``processes`` processes are up and their memory has stopped growing."""
    deadline = time.monotonic() + 30
    previous: dict[int, int] = {}
    while True:
        current = rss_bytes(pid)
        if len(current) >= processes and current.keys() == previous.keys():
            if all(abs(current[p] - previous[p]) < 2 * 1024 * 1024 for p in current):
                return
        assert time.monotonic() < deadline, "the DICOM service did not settle"
        previous = current
        time.sleep(0.5)


@pytest.fixture
def dicom_service(tenants, transactional_db, storage_dir, tmp_path):  # noqa: F811
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ATTACK_CT", host="127.0.0.1")
    process, port, _ = start_dicom_service(tmp_path, DICOM_SERVICE_PROCESSES=str(SERVICE_PROCESSES), **LIMITS)
    try:
        settle(process.pid, 1 + SERVICE_PROCESSES)
        yield Service(port, process.pid, "ATTACK_CT", settings.DICOM_AE_TITLE)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture
def edge_service(start_edge):  # noqa: F811
    edge = start_edge(**LIMITS)
    settle(edge.process.pid, 1)
    return Service(edge.port, edge.process.pid, "ALPHA_CT", "PACSEDGE")
