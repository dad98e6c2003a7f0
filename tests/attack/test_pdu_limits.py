"""A peer cannot make a DICOM service (cloud or edge) hold memory or connections it has not earned.

Raw sockets send what an attacker would: the 6-byte header of an
A-ASSOCIATE-RQ declaring a PDU of almost 4 GiB, then nothing. The service
must not allocate that length (its resident memory, read from /proc, stays
within 50 MB of where it was), must cut the silent peer off after its ACSE
timeout (1 s here), must refuse an address holding more connections than
DICOM_MAX_ASSOCIATIONS_PER_PEER, and must still store a real image sent
by dcmtk's ``storescu`` afterwards.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from pathlib import Path

import pytest

from archive.models import Instance
from tests.archive.conftest import dcmtk, sample_path, with_fresh_uids
from tests.attack.conftest import LIMITS, Service, rss_bytes

pytestmark = [pytest.mark.dcmtk, pytest.mark.django_db(transaction=True)]

# A-ASSOCIATE-RQ (PDU type 0x01), reserved byte, a declared length of 0xFFFFFFF0 bytes.
HUGE_HEADER = struct.pack(">BBI", 0x01, 0x00, 0xFFFFFFF0)
ACSE_TIMEOUT = float(LIMITS["DICOM_ACSE_TIMEOUT_SECONDS"])
PER_PEER = int(LIMITS["DICOM_MAX_ASSOCIATIONS_PER_PEER"])
MEMORY_MARGIN = 50 * 1024 * 1024


@pytest.fixture(params=["cloud", "edge"])
def service(request) -> Service:
    return request.getfixturevalue("dicom_service" if request.param == "cloud" else "edge_service")


def connect(service: Service, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    if send:
        sock.sendall(send)
    return sock


def is_closed(sock: socket.socket) -> bool:
    """True once the service has closed the connection (after anything it sent, such as an A-ABORT)."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(65536):
                return True
        except OSError:  # reset
            return True
    return False


def watch(
    service: Service, sockets: list[socket.socket], seconds: float, before: dict[int, int] | None = None
) -> tuple[int, float | None]:
    """How much the resident memory of any of the service's processes grew (since ``before``) while the
    sockets were open, and when the last of them was closed (None: still open after ``seconds``)."""
    started = time.monotonic()
    before = before or rss_bytes(service.pid)
    grown = 0
    while True:
        now = rss_bytes(service.pid)
        grown = max(grown, *(size - before.get(pid, 0) for pid, size in now.items()))
        if all(is_closed(sock) for sock in sockets):
            return grown, time.monotonic() - started
        if time.monotonic() - started > seconds:
            return grown, None
        time.sleep(0.05)


def stored_by_storescu(service: Service, tmp_path: Path) -> None:
    """A modality's image is stored once the attacker's connections have ended."""
    time.sleep(0.5)
    image = with_fresh_uids(
        sample_path("CT_small.dcm"), tmp_path / "ct.dcm", SpecificCharacterSet="ISO_IR 192", PatientName="张三"
    )
    sent = dcmtk(
        "storescu", "-aet", service.calling_ae, "-aec", service.called_ae, "127.0.0.1", str(service.port), str(image)
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    import pydicom

    uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    deadline = time.monotonic() + 30  # the edge forwards it to the cloud
    while not Instance.objects.filter(sop_instance_uid=uid).exists():
        assert time.monotonic() < deadline, "the image sent after the attack was not stored"
        time.sleep(0.1)


def huge_headers_are_neither_allocated_nor_held(service: Service, connections: int) -> None:
    before = rss_bytes(service.pid)
    sockets = [connect(service, HUGE_HEADER) for _ in range(connections)]
    try:
        grown, closed_after = watch(service, sockets, ACSE_TIMEOUT + 4, before)
    finally:
        for sock in sockets:
            sock.close()
    assert grown < MEMORY_MARGIN, f"{connections} connection(s): resident memory grew by {grown >> 20} MiB"
    assert closed_after is not None, "the service kept a silent peer's connection open past its ACSE timeout"


def connections_over_the_limit_are_refused(service: Service) -> None:
    held = [connect(service) for _ in range(PER_PEER)]
    try:
        time.sleep(0.2)  # accepted, waiting for their association requests
        over = connect(service)
        try:
            over.settimeout(ACSE_TIMEOUT / 2)  # refused at once, not cut off by the timeout
            answer = b""
            try:
                while chunk := over.recv(64):
                    answer += chunk
            except ConnectionResetError:
                pass
            except TimeoutError:
                pytest.fail("a connection over the limit was left open")
            # Refused with A-ASSOCIATE-RJ (rejected-transient, local limit exceeded), or simply closed.
            assert answer in (b"", struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 2, 3, 2)), answer
        finally:
            over.close()
        # Silent connections (not even a PDU header) are cut off after the ACSE timeout as well.
        _, closed_after = watch(service, held, ACSE_TIMEOUT + 4)
        assert closed_after is not None, "silent connections were kept open past the ACSE timeout"
    finally:
        for sock in held:
            sock.close()


def test_a_peer_cannot_make_the_service_hold_memory_or_connections(service, tmp_path):
    huge_headers_are_neither_allocated_nor_held(service, connections=1)
    huge_headers_are_neither_allocated_nor_held(service, connections=3)
    time.sleep(ACSE_TIMEOUT + 1)  # the attacker's associations have ended (at the latest after the ACSE timeout)
    connections_over_the_limit_are_refused(service)
    stored_by_storescu(service, tmp_path)
