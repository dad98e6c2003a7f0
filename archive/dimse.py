"""The DICOM service framework shared by the cloud and the edge, and the archive's DIMSE services.

Apps contribute services (``<app>.dimse.services()`` listed in
``settings.DIMSE_SERVICE_PROVIDERS``); :func:`build_ae` registers their
presentation contexts and one dispatcher per DIMSE event that hands each
request to the service for its SOP class — C-FIND, for one, is served both by
Query/Retrieve (archive) and by Modality Worklist (worklist).

Only configured peers (:class:`archive.models.DicomNode`) may associate; the
calling AE title decides the institution a request acts for.

The archive's services (:func:`services`): C-STORE for every storage SOP
class in every transfer syntax, stored as received (PS3.4 Annex B); C-FIND,
C-MOVE and C-GET in the Patient Root and Study Root information models
(PS3.4 Annex C). Every socket we open or accept has TCP_NODELAY on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import struct
import threading
import time
import types
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.module_loading import import_string
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom import _config as _pynetdicom_config
from pynetdicom import association as _pynetdicom_association
from pynetdicom import dul as _pynetdicom_dul
from pynetdicom import service_class as _pynetdicom_service_class
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import encode as _pydicom_encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AssociationServer, RequestHandler, ThreadedAssociationServer

from pacs_cloud import audit
from pacs_cloud.lib.dicom_match import Record, encode_response, response_identifier
from pacs_cloud.models import Institution

from . import query as q
from . import retrieve
from .copies.restore import RestorePending, do_finish_restore, pending_restore
from .ingest import IngestError, IngestSession, Source, announce_deferred, refusal, store_dataset
from .models import DicomNode, Instance, Patient, Study

log = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# Storage accepts every transfer syntax pydicom knows, uncompressed ones first.
STORAGE_SYNTAXES = UNCOMPRESSED_SYNTAXES + [ts for ts in AllTransferSyntaxes if ts not in UNCOMPRESSED_SYNTAXES]

# DIMSE status codes used by more than one service (PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORIZED = 0x0124
# C-STORE failures (PS3.4 B.2.3)
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DUPLICATE_SOP = 0x0111
# Query/Retrieve failures (PS3.4 C.4)
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC001
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801

STORE_STATUS = {
    "too_large": STATUS_OUT_OF_RESOURCES,
    "storage": STATUS_OUT_OF_RESOURCES,
    "conflict": STATUS_DUPLICATE_SOP,
    "inconsistent": STATUS_DATASET_MISMATCH,
}


@dataclass(frozen=True)
class DimseService:
    """One SCP service: the event it answers, for which SOP classes, and how."""

    event: Any  # a pynetdicom intervention event, e.g. evt.EVT_C_FIND
    sop_classes: tuple[str, ...]
    handler: Callable[..., Any]
    transfer_syntaxes: tuple[str, ...] | None = None  # None: the uncompressed ones


def calling_ae_title(assoc: Any) -> str:
    # During EVT_REQUESTED only the A-ASSOCIATE-RQ primitive carries the title.
    title = assoc.requestor.ae_title or getattr(assoc.requestor.primitive, "calling_ae_title", "") or ""
    return title.strip()


# The node each association was accepted for (by id of the association), so
# its requests do not look it up again; dropped when the association ends.
_nodes: dict[int, DicomNode] = {}


def calling_node(assoc: Any) -> DicomNode | None:
    """The configured node behind an association, or None for an unknown peer.

    Looked up when the association is requested; its requests get the node
    it was accepted for (as a C-STORE session does).
    """
    known = _nodes.get(id(assoc))
    if known is not None:
        return known
    ae_title = calling_ae_title(assoc)
    node = DicomNode.objects.select_related("institution").filter(ae_title=ae_title, is_active=True).first()
    if node is None or not node.institution.is_active:
        return None
    if node.host and node.host != assoc.requestor.address:
        return None
    return node


def calling_institution(assoc: Any) -> Institution | None:
    node = calling_node(assoc)
    return node.institution if node else None


def _handle_association_requested(event: Any) -> None:
    pool = _pools.get(event.assoc.ae)
    if pool is None:
        close_old_connections()
        node = calling_node(event.assoc)
    else:
        with pool.lent():
            node = calling_node(event.assoc)
    if node is None:
        log.warning(
            "refused association from unknown AE %r at %s", calling_ae_title(event.assoc), event.assoc.requestor.address
        )
        # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognized
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()  # lets the DUL flush the A-ASSOCIATE-RJ before the socket closes
        return
    _nodes[id(event.assoc)] = node


def _handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def collect_services(providers: Iterable[str] | None = None) -> list[DimseService]:
    found = [DimseService(evt.EVT_C_ECHO, (Verification,), _handle_echo)]
    for dotted in providers if providers is not None else settings.DIMSE_SERVICE_PROVIDERS:
        found.extend(import_string(dotted)())
    return found


_connections_checked = threading.local()


def _check_connections() -> None:
    """Drop broken or expired database connections, at most once a second per thread.

    With CONN_HEALTH_CHECKS each check costs a round trip to the database;
    once per C-STORE would be one round trip in five.
    """
    now = time.monotonic()
    if now - getattr(_connections_checked, "at", 0.0) > 1.0:
        close_old_connections()
        _connections_checked.at = now


def _dispatcher(services: list[DimseService]) -> Callable[..., Any]:
    by_class = {sop_class: service for service in services for sop_class in service.sop_classes}

    def dispatch(event: Any, *args: Any) -> Any:
        request = event.request
        sop_class = str(
            getattr(request, "AffectedSOPClassUID", None) or getattr(request, "RequestedSOPClassUID", None) or ""
        )
        service = by_class.get(sop_class) or (services[0] if len(services) == 1 else None)
        if service is None:
            return 0x0122  # SOP class not supported
        pool = _pools.get(event.assoc.ae)
        if pool is None:
            _check_connections()
            return service.handler(event, *args)
        with pool.lent():
            result = service.handler(event, *args)
        # A generator (C-FIND, C-MOVE, C-GET) does its work as pynetdicom iterates it.
        return pool.lent_to(result) if isinstance(result, types.GeneratorType) else result

    return dispatch


# Database connections lent to associations -------------------------------------------


class ConnectionPool:
    """Open database connections lent to the threads that serve associations.

    pynetdicom serves every association in a new thread and Django opens a
    connection per thread, so without a pool each association would first
    open a database connection (on PostgreSQL a new server process,
    authentication and session set-up: milliseconds, more on a busy
    machine) before it could even look up its calling AE. A request borrows
    a connection while it runs and gives it back; at most ``size`` idle
    connections are kept. Like :func:`_check_connections`, a connection is
    checked for errors and age at most once a second.
    """

    def __init__(self, alias: str = DEFAULT_DB_ALIAS, size: int = 8) -> None:
        self.alias = alias
        self.size = size
        self._idle: list[tuple[BaseDatabaseWrapper, float]] = []  # (connection, when last checked)
        self._lock = threading.Lock()
        self._closed = False

    def _own(self) -> BaseDatabaseWrapper | None:
        """This thread's connection, if it has one (without opening one)."""
        return next((c for c in connections.all(initialized_only=True) if c.alias == self.alias), None)

    @contextlib.contextmanager
    def lent(self) -> Iterator[None]:
        """This thread uses a pooled connection inside the block (unless it has its own)."""
        if self._own() is not None:
            yield
            return
        with self._lock:
            conn, checked = self._idle.pop() if self._idle else (None, 0.0)
        if conn is None:
            conn = connections.create_connection(self.alias)
            conn.inc_thread_sharing()  # it will serve other threads after this one
        connections[self.alias] = conn
        try:
            now = time.monotonic()
            if now - checked > 1.0:
                conn.close_if_unusable_or_obsolete()
                checked = now
            yield
        finally:
            if self._own() is conn:
                del connections[self.alias]
            self._give_back(conn, checked)

    def lent_to(self, generator: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        with self.lent():
            return (yield from generator)

    def _give_back(self, conn: BaseDatabaseWrapper, checked: float) -> None:
        if not conn.in_atomic_block and not conn.needs_rollback:
            with self._lock:
                if not self._closed and len(self._idle) < self.size:
                    self._idle.append((conn, checked))
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


# The pool of each AE served by start_server (the edge serves without one).
_pools: weakref.WeakKeyDictionary[AE, ConnectionPool] = weakref.WeakKeyDictionary()


# Latency: TCP_NODELAY and pynetdicom's polling ----------------------------------------


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _handle_connection_open(event: Any) -> None:
    """For associations we request (C-MOVE sub-associations): TCP_NODELAY on our socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        set_nodelay(sock)


NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, _handle_connection_open)]


class NoDelayAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket: without it each DIMSE round
    trip waits ~40 ms for Nagle's algorithm and the peer's delayed ACK.

    Starts each association's thread from the accepting thread, and closes
    the connection pool of its AE, if any, when shut down.
    """

    peers: PeerConnections | None = None
    # With several service processes (archive.dimse_processes): the socket
    # the parent listens on, and this process's share of the associations.
    listening: socket.socket | None = None
    load: Any = None

    def server_bind(self) -> None:
        if self.listening is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()
        self.socket = self.listening
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listening is None:
            super().server_activate()

    def server_close(self) -> None:
        if self.listening is None:
            super().server_close()
        elif self.socket is not None:
            self.socket.close()  # this process's descriptor; the others keep listening

    def _handle_request_noblock(self) -> None:
        if self.load is not None and not self.load.may_accept():
            # Another process serves fewer associations: leave the connection
            # to it, and take it after all if it is still waiting after 50 ms.
            deadline = time.monotonic() + 0.05
            while True:
                time.sleep(0.005)
                try:
                    if self.socket is None or not select.select([self.socket], [], [], 0)[0]:
                        return
                except (OSError, ValueError):
                    return
                if time.monotonic() > deadline or self.load.may_accept():
                    break
        try:
            super()._handle_request_noblock()  # type: ignore[misc]
        except BlockingIOError:  # another process took it
            pass

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = AssociationServer.get_request(self)
        set_nodelay(client)
        # Accepted sockets do not inherit the listening socket's timeout: without
        # one a peer that stops sending holds its connection for ever.
        client.settimeout(self.ae.network_timeout)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.peers is None:
            self.peers = PeerConnections(settings.DICOM_MAX_ASSOCIATIONS_PER_PEER)
        if self.peers.admit(client_address[0]):
            return True
        log.warning("refused a connection from %s: it holds %d already", client_address[0], self.peers.limit)
        refuse_connection(request)
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        # The association runs in a thread of its own (and its DUL in another):
        # create it here rather than in a third thread started only to start it.
        self.process_request_thread(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        _CountedRequestHandler(request, client_address, self)

    def shutdown(self) -> None:
        super().shutdown()
        pool = _pools.pop(self.ae, None)
        if pool is not None:
            pool.close()


class _CountedRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection; the connection leaves
    its peer's count (:class:`PeerConnections`) when its association ends."""

    server: NoDelayAssociationServer

    def handle(self) -> None:
        peers, load, address = self.server.peers, self.server.load, self.client_address[0]

        def leave() -> None:
            if peers is not None:
                peers.leave(address)
            if load is not None:
                load.add(-1)

        if load is not None:
            load.add(1)
        started = False
        try:
            assoc = self._create_association()
            run = assoc.run

            def run_then_leave() -> None:
                try:
                    run()
                finally:
                    leave()

            assoc.run = run_then_leave  # type: ignore[method-assign]
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            started = True
        finally:
            if not started:
                leave()


class _EventClock:
    """Stands in for ``time`` inside pynetdicom's association and DUL modules.

    Both of pynetdicom's loops poll with ``time.sleep(0.001)``: the
    association thread for a complete DIMSE message, the DUL thread for
    bytes on the socket or a message to send. On a stream of C-STOREs that is
    two sleeps per instance, about half of each round trip. Here the same
    calls wait for the thing itself, with the millisecond as a ceiling: the
    association thread on its message queue, the DUL thread on its socket and
    on a wake-up pipe written whenever something is queued for it to send.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if abs(seconds - 0.001) > 1e-9:
            time.sleep(seconds)
            return
        thread = threading.current_thread()
        if isinstance(thread, Association):
            _wait_for_message(thread, seconds)
        elif isinstance(thread, DULServiceProvider):
            _wait_for_io(thread, seconds)
        else:
            time.sleep(seconds)


def _wait_for_message(assoc: Association, timeout: float) -> None:
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages._qsize():  # (qsize() would take the lock we hold)
            messages.not_empty.wait(timeout)


_wakeups: weakref.WeakKeyDictionary[DULServiceProvider, int] = weakref.WeakKeyDictionary()


def _wakeup_fd(dul: DULServiceProvider) -> int:
    """The read end of a pipe written to whenever a primitive is queued for ``dul`` to send."""
    found = _wakeups.get(dul)
    if found is not None:
        return found
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    queue = dul.to_provider_queue
    put = queue.put

    def put_and_wake(item: Any, *args: Any, **kwargs: Any) -> None:
        put(item, *args, **kwargs)
        try:
            os.write(write_fd, b"!")
        except OSError:  # the pipe is full (the DUL will look anyway) or closed
            pass

    queue.put = put_and_wake  # type: ignore[method-assign]
    weakref.finalize(dul, os.close, read_fd)
    weakref.finalize(dul, os.close, write_fd)
    _wakeups[dul] = read_fd
    return read_fd


def _wait_for_io(dul: DULServiceProvider, timeout: float) -> None:
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        time.sleep(timeout)
        return
    wake = _wakeup_fd(dul)
    try:
        readable, _, _ = select.select([sock, wake], [], [], timeout)
    except (OSError, ValueError):  # the socket closed under us: the loop will notice
        time.sleep(timeout)
        return
    if wake in readable:
        try:
            os.read(wake, 4096)
        except BlockingIOError:
            pass


# Limits towards peers: what a connection may make us hold ------------------------------

_PDU_HEADER = struct.Struct(">BxL")  # PDU type, reserved, length (PS3.8 9.3.1)
_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
# A-ASSOCIATE-RQ/-AC/-RJ, A-RELEASE and A-ABORT PDUs are small: only a P-DATA-TF
# PDU of an established association may be as large as DICOM_MAX_PDU_BYTES.
CONTROL_PDU_LIMIT = 64 * 1024
_ESTABLISHED_STATES = frozenset({"Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12"})
# A PDU's buffer starts at this size and doubles as its bytes arrive.
_FIRST_READ = 256 * 1024


class PduRefused(Exception):
    """A peer declared a PDU larger than it may send at this point of the association."""


def pdu_limit(pdu_type: int, established: bool) -> int:
    if pdu_type == _P_DATA_TF and established:
        return max(settings.DICOM_MAX_PDU_BYTES, CONTROL_PDU_LIMIT)
    return CONTROL_PDU_LIMIT


def receive_into(sock: socket.socket, buffer: bytearray, count: int, deadline: float | None = None) -> bool:
    """Append ``count`` bytes read from ``sock`` to ``buffer``; False if the peer closed first.

    The buffer grows only as bytes arrive (doubling from 256 KiB), so a
    peer that declares a large PDU and sends little of it holds little of
    our memory; a large PDU still arrives in few system calls. With a
    ``deadline`` (``time.monotonic()``) the whole read must end by then;
    otherwise each read waits at most the socket's timeout. Raises
    ``TimeoutError`` (an ``OSError``) when the peer is too slow.
    """
    read = len(buffer)
    goal = read + count
    while read < goal:
        if read == len(buffer):
            buffer.extend(bytes(min(goal, read + max(_FIRST_READ, read)) - read))
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the peer did not send its PDU in time")
            sock.settimeout(remaining)
        with memoryview(buffer) as view:
            received = sock.recv_into(view[read:])
        if not received:
            del buffer[read:]
            return False
        read += received
    return True


def _read_pdu_data(self: DULServiceProvider) -> None:
    """``DULServiceProvider._read_pdu_data`` within limits a peer cannot push us past.

    pynetdicom reads a PDU of whatever length its header declares. Here a
    PDU longer than the peer may send at this point (:func:`pdu_limit`:
    64 KiB before the association is established, DICOM_MAX_PDU_BYTES for
    data after) closes the connection before anything is read; the rest is
    read as it arrives (:func:`receive_into`), within the ACSE timeout
    until the association is established and within the network timeout of
    each read after. The same events as pynetdicom's for everything else.
    """
    wrapper = self.socket
    sock = wrapper.socket if wrapper is not None else None
    if wrapper is None or sock is None:
        self.event_queue.put("Evt17")
        return
    established = self.state_machine.current_state in _ESTABLISHED_STATES
    deadline = None
    if not established:
        deadline = time.monotonic() + float(self.assoc.acse_timeout or settings.DICOM_ACSE_TIMEOUT_SECONDS)
    pdu = bytearray()
    try:
        if not receive_into(sock, pdu, 6, deadline):
            raise ConnectionError("the connection closed inside a PDU header")
        pdu_type, length = _PDU_HEADER.unpack(pdu)
        if pdu_type not in _PDU_TYPES:
            log.warning("unknown PDU type 0x%02X from %s", pdu_type, self.assoc.requestor.address)
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return
        if length > pdu_limit(pdu_type, established):
            raise PduRefused(f"a PDU of type 0x{pdu_type:02X} declared {length} bytes")
        if not receive_into(sock, pdu, length, deadline):
            raise ConnectionError(f"the connection closed after {len(pdu)} of {length + 6} bytes of a PDU")
        if deadline is not None:
            sock.settimeout(self.assoc.network_timeout)
    except (OSError, PduRefused) as exc:
        log.warning("closed the DICOM connection from %s: %s", self.assoc.requestor.address, exc)
        state = self.state_machine.current_state
        wrapper.close()  # queues Evt17, transport connection closed
        if state == "Sta2":
            # The association waits for an A-ASSOCIATE-RQ that will not come:
            # end it now (None is what it gets when its ACSE timeout expires).
            self.to_user_queue.put(None)  # type: ignore[arg-type]
        return
    try:
        decoded, event = self._decode_pdu(pdu)
    except Exception:
        log.warning("undecodable PDU from %s", self.assoc.requestor.address, exc_info=True)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(decoded)


class PeerConnections:
    """Connections each peer address holds open on a DICOM service, within DICOM_MAX_ASSOCIATIONS_PER_PEER.

    Every accepted connection holds a thread or two until it ends; one
    address may not take them all.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, address: str) -> bool:
        with self._lock:
            held = self._open.get(address, 0)
            if held >= self.limit:
                return False
            self._open[address] = held + 1
            return True

    def leave(self, address: str) -> None:
        with self._lock:
            held = self._open.get(address, 0) - 1
            if held > 0:
                self._open[address] = held
            else:
                self._open.pop(address, None)


# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-transient, by the service provider
# (presentation related function), local limit exceeded.
LOCAL_LIMIT_REJECT = struct.pack(">BBIBBBB", 0x03, 0x00, 4, 0x00, 0x02, 0x03, 0x02)


def refuse_connection(sock: socket.socket) -> None:
    """Answer a connection over its peer's limit with A-ASSOCIATE-RJ and close it, without reading it."""
    try:
        sock.setblocking(False)
        sock.send(LOCAL_LIMIT_REJECT)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _copy_context(self: PresentationContext, memo: dict) -> PresentationContext:
    """``deepcopy`` of a supported presentation context: the context itself.

    pynetdicom deep-copies the supported contexts for every association; with
    every storage SOP class in every transfer syntax that re-creates (and
    re-validates) thousands of UID strings, tens of milliseconds per
    association. Negotiation only reads the acceptor's contexts (the
    accepted ones are new objects), so they are shared.
    """
    return self


class EncodedIdentifier:
    """A C-FIND response Identifier for a matched record, encoded without pydicom where it can be.

    pynetdicom encodes every response Identifier with pydicom, element by
    element; for a worklist's many small answers that is most of a query's
    time. :func:`pacs_cloud.lib.dicom_match.encode_response` writes the same
    bytes directly; where it declines, pydicom encodes the Dataset
    :func:`~pacs_cloud.lib.dicom_match.response_identifier` builds.
    """

    __slots__ = ("identifier", "record", "character_set")

    def __init__(self, identifier: Dataset, record: Record, character_set: str | None) -> None:
        self.identifier = identifier
        self.record = record
        self.character_set = character_set

    def dataset(self) -> Dataset:
        return response_identifier(self.identifier, self.record, character_set=self.character_set)

    def encode(self, implicit_vr: bool) -> bytes | None:
        return encode_response(self.identifier, self.record, character_set=self.character_set, implicit_vr=implicit_vr)

    def __iter__(self) -> Iterator[Any]:  # for pynetdicom's debug log of response identifiers
        return iter(self.dataset())


def _encode_identifier(ds: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's ``encode`` for its service classes, taking :class:`EncodedIdentifier` as well."""
    if isinstance(ds, EncodedIdentifier):
        encoded = ds.encode(is_implicit_vr) if is_little_endian and not deflated else None
        if encoded is not None:
            return encoded
        ds = ds.dataset()
    return _pydicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


_ELEMENT = struct.Struct("<HHI")  # an Implicit VR Little Endian element's tag and length
_US = struct.Struct("<H")
_C_FIND_RSP = 0x8020  # Command Field (PS3.7 E.1-1)
_DATA_SET_PRESENT, _NO_DATA_SET = 0x0001, 0x0101  # Command Data Set Type
_send_dimse_message = DIMSEServiceProvider.send_msg


def _command_element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def c_find_response_pdata(primitive: C_FIND, context_id: int, max_pdu_length: int) -> list[P_DATA] | None:
    """The P-DATA primitives pynetdicom sends for a C-FIND response without an
    error comment or offending element, or None for any other.

    pynetdicom builds each response's Command Set as a pydicom Dataset and
    encodes it twice (once to learn its group length); a worklist answer
    spends a third of its time there. The Command Set (PS3.7 9.3.2.2,
    Implicit VR Little Endian) is written here directly, and sent with the
    Identifier in one P-DATA where the peer's maximum PDU length allows.
    """
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    sop_class, message_id, status = primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo, primitive.Status
    if sop_class is None or message_id is None or status is None:
        return None
    data_set = primitive.Identifier.getvalue() if primitive.Identifier is not None else None
    if data_set == b"":
        return None
    uid = str(sop_class).encode()
    body = b"".join(
        [
            _command_element(0x00000002, uid + b"\0" if len(uid) % 2 else uid),
            _command_element(0x00000100, _US.pack(_C_FIND_RSP)),
            _command_element(0x00000120, _US.pack(message_id)),
            _command_element(0x00000800, _US.pack(_NO_DATA_SET if data_set is None else _DATA_SET_PRESENT)),
            _command_element(0x00000900, _US.pack(status)),
        ]
    )
    command = _command_element(0x00000000, struct.pack("<I", len(body))) + body
    fragments = [b"\x03" + command] + ([b"\x02" + data_set] if data_set is not None else [])
    # Each PDV item is its fragment plus a 4-byte length and the context ID.
    sizes = [len(fragment) + 5 for fragment in fragments]
    pdata = P_DATA()
    if not max_pdu_length or sum(sizes) <= max_pdu_length:
        # Command and Data Set in one P-DATA-TF PDU (PS3.8 9.3.5: one or more PDV items).
        pdata.presentation_data_value_list.extend((context_id, fragment) for fragment in fragments)
        return [pdata]
    if max(sizes) > max_pdu_length:
        return None  # pynetdicom fragments it
    found = []
    for fragment in fragments:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, fragment))
        found.append(pdata)
    return found


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg`` with :func:`c_find_response_pdata` for C-FIND responses
    and :func:`_send_store_response` for C-STORE responses."""
    if type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None:
        if not _send_store_response(self, primitive, context_id):
            _send_dimse_message(self, primitive, context_id)
        _announce_after_answer(self.assoc)
        return
    if (
        type(primitive) is C_FIND
        and primitive.MessageIDBeingRespondedTo is not None
        and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)  # nobody looks at the message
    ):
        found = c_find_response_pdata(primitive, context_id, self.maximum_pdu_size)
        if found is not None:
            for pdata in found:
                self.dul.send_pdu(pdata)
            return
    _send_dimse_message(self, primitive, context_id)


def record_response(identifier: Dataset, record: Record, *, character_set: str | None = None) -> Any:
    """The C-FIND response Identifier of a matched record, for a handler to yield.

    An :class:`EncodedIdentifier` once :func:`tune_pynetdicom` has taught
    pynetdicom to encode one, else the Dataset itself.
    """
    if _pynetdicom_service_class.encode is _encode_identifier:  # type: ignore[attr-defined]
        return EncodedIdentifier(identifier, record, character_set)
    return response_identifier(identifier, record, character_set=character_set)


def store_response_command(primitive: C_STORE) -> bytes:
    """The encoded command set of a successful C-STORE-RSP (PS3.7 9.3.1.2).

    Encoded by hand: it is answered to every stored instance, and building it
    as a data set and encoding it with pydicom costs more than storing the
    instance's index row. The same bytes as pynetdicom's encoding.
    """
    body = b"".join(
        (
            _command_element(0x00000002, _even_uid(primitive.AffectedSOPClassUID)),
            _command_element(0x00000100, struct.pack("<H", 0x8001)),  # Command Field: C-STORE-RSP
            _command_element(0x00000120, struct.pack("<H", primitive.MessageIDBeingRespondedTo)),
            _command_element(0x00000800, struct.pack("<H", 0x0101)),  # Command Data Set Type: none
            _command_element(0x00000900, struct.pack("<H", primitive.Status)),
            _command_element(0x00001000, _even_uid(primitive.AffectedSOPInstanceUID)),
        )
    )
    return _command_element(0x00000000, struct.pack("<I", len(body))) + body


def p_data_tf(context_id: int, value: bytes) -> bytes:
    """A P-DATA-TF PDU of one presentation data value (PS3.8 9.3.5): ``value`` is its control header and data."""
    item = struct.pack(">IB", len(value) + 1, context_id) + value
    return struct.pack(">BBI", 0x04, 0x00, len(item)) + item


def _even_uid(uid: Any) -> bytes:
    raw = str(uid).encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _send_store_response(self: DIMSEServiceProvider, primitive: C_STORE, context_id: int) -> bool:
    """Send a successful C-STORE-RSP from its encoded bytes; False (nothing sent) for any other,
    or when someone listens to what is sent (EVT_DIMSE_SENT, EVT_PDU_SENT)."""
    if (
        primitive.Status != STATUS_SUCCESS
        or primitive.ErrorComment
        or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        or self.assoc.get_handlers(evt.EVT_PDU_SENT)
    ):
        return False
    command = store_response_command(primitive)
    if self.maximum_pdu_size and len(command) + 6 > self.maximum_pdu_size:
        return False
    dul = self.dul
    if dul.socket is not None and dul.state_machine.current_state == "Sta6" and dul.to_provider_queue.empty():
        # Written by this thread, as the DUL's DT-1 would (Sta6 + Evt9: send a
        # P-DATA-TF, stay in Sta6), sparing the hand-off to the DUL thread:
        # the sender waits for this answer to send more.
        dul.socket.send(p_data_tf(context_id, b"\x03" + command))
    else:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # last command fragment
        dul.send_pdu(pdata)
    return True


def tune_pynetdicom() -> None:
    """Process-wide latency tuning of pynetdicom for a DICOM service process.

    Its loops wait for events instead of polling (:class:`_EventClock`),
    presentation contexts are copied cheaply per association
    (:func:`_copy_context`). ``DIMSE_EVENT_WAITS=False`` leaves that as it is.

    Whatever that setting, PDUs are read within the limits of
    :func:`_read_pdu_data` (few system calls for a large one), its service classes encode an
    :class:`EncodedIdentifier` (:func:`record_response`) as such, C-FIND
    responses' Command Sets are written directly
    (:func:`c_find_response_pdata`), a successful C-STORE is answered from
    bytes encoded by hand (:func:`_send_store_response`), and it no longer formats every PDU,
    DIMSE message and identifier for a log that discards them (unless its
    logger is enabled for that level).
    """
    _pynetdicom_service_class.encode = _encode_identifier  # type: ignore[attr-defined]
    DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
    logger = logging.getLogger("pynetdicom")
    if not logger.isEnabledFor(logging.DEBUG):
        _pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        _pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    if not logger.isEnabledFor(logging.INFO):
        _pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
    if not settings.DIMSE_EVENT_WAITS:
        return
    PresentationContext.__deepcopy__ = _copy_context  # type: ignore[attr-defined]
    clock = _EventClock()
    _pynetdicom_association.time = clock  # type: ignore[assignment]
    _pynetdicom_dul.time = clock  # type: ignore[assignment]


def build_ae(ae_title: str, services: list[DimseService]) -> tuple[AE, list[tuple[Any, Callable[..., Any]]]]:
    """An AE supporting every service's contexts, and the event handlers to bind."""
    ae = AE(ae_title=ae_title)
    # Large PDUs (fewer of them for large instances), within a limit a peer cannot push us past.
    ae.maximum_pdu_size = settings.DICOM_MAX_PDU_BYTES
    ae.acse_timeout = settings.DICOM_ACSE_TIMEOUT_SECONDS
    ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT_SECONDS
    handlers: list[tuple[Any, Callable[..., Any]]] = [
        (evt.EVT_REQUESTED, _handle_association_requested),
        (evt.EVT_RELEASED, _forget_association),
        (evt.EVT_ABORTED, _forget_association),
        (evt.EVT_CONN_CLOSE, _forget_association),
    ]
    by_event: dict[Any, list[DimseService]] = {}
    for service in services:
        by_event.setdefault(service.event, []).append(service)
        for sop_class in service.sop_classes:
            # Accept SCP/SCU role selection (PS3.7 D.3.3.4): a C-GET requestor
            # proposes to be the storage SCP for the instances it gets back.
            ae.add_supported_context(
                sop_class, list(service.transfer_syntaxes or UNCOMPRESSED_SYNTAXES), scu_role=True, scp_role=True
            )
    for event, group in by_event.items():
        handlers.append((event, _dispatcher(group)))
    return ae, handlers


def start_server(
    ae_title: str,
    host: str,
    port: int,
    providers: Iterable[str] | None = None,
    *,
    listening: socket.socket | None = None,
    prepare: Callable[[NoDelayAssociationServer], None] | None = None,
) -> ThreadedAssociationServer:
    """Start serving in background threads; returns the server (``shutdown()`` stops it).

    With ``listening``, on that already listening socket (shared with other
    service processes: :mod:`archive.dimse_processes`); ``prepare`` sees the
    server before it accepts anything.
    """
    tune_pynetdicom()
    ae, handlers = build_ae(ae_title, collect_services(providers))
    _pools[ae] = ConnectionPool()
    server_class: type[NoDelayAssociationServer] = NoDelayAssociationServer
    if listening is not None:
        server_class = type("SharedSocketAssociationServer", (NoDelayAssociationServer,), {"listening": listening})  # type: ignore[assignment]
    server = ae.make_server((host, port), evt_handlers=handlers, server_class=server_class)
    if prepare is not None:
        prepare(server)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, name=f"dimse-{ae_title}", daemon=True)
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it as well
    return server


# Per-association state ---------------------------------------------------------------

_sessions: dict[int, tuple[IngestSession, Institution]] = {}
_sessions_lock = threading.Lock()


def _association_session(assoc: Any) -> tuple[IngestSession, Institution] | None:
    key = id(assoc)
    found = _sessions.get(key)
    if found is not None:
        return found
    node = calling_node(assoc)
    if node is None:
        return None
    session = IngestSession(Source("dimse", node.ae_title, address=assoc.requestor.address), deferred=[])
    with _sessions_lock:
        _sessions[key] = (session, node.institution)
    return session, node.institution


# What requests left to do once their association has ended (by id of the association).
_when_ended: dict[int, list[Callable[[], object]]] = {}


def when_association_ends(assoc: Any, action: Callable[[], object]) -> None:
    """Run ``action`` once ``assoc`` has ended (released, aborted or disconnected).

    For work the peer need not wait for: a query's audit event is written as
    the association is released, its A-RELEASE-RP already on its way, rather
    than between the last answer and the final status the modality waits
    for. A server that does not watch its associations end (the edge's; see
    :func:`start_server`) runs it at once.
    """
    if _pools.get(assoc.ae) is None:
        action()
        return
    with _sessions_lock:
        _when_ended.setdefault(id(assoc), []).append(action)


def _forget_association(event: Any) -> None:
    key = id(event.assoc)
    with _sessions_lock:
        session = _sessions.pop(key, None)
        actions = _when_ended.pop(key, [])
    _nodes.pop(key, None)
    if session is not None and session[0].deferred:
        actions.insert(0, lambda: announce_deferred(session[0]))
    if not actions:
        return
    pool = _pools.get(event.assoc.ae)
    with pool.lent() if pool is not None else contextlib.nullcontext():
        for action in actions:
            try:
                action()
            except Exception:
                log.exception("work left for the end of an association with %s failed", calling_ae_title(event.assoc))


def _announce_after_answer(assoc: Any) -> None:
    """A C-STORE was answered: announce what it stored while the sender sends the next one."""
    found = _sessions.get(id(assoc))
    if found is None or not found[0].deferred:
        return
    pool = _pools.get(assoc.ae)
    with pool.lent() if pool is not None else contextlib.nullcontext():
        announce_deferred(found[0])


# C-STORE ---------------------------------------------------------------------------


def handle_store(event: Any) -> Any:
    """Archive one C-STORE request's data set as received (the transfer syntax of its context).

    Success is answered only once the object is durable and indexed; a
    refusal carries the reason in Error Comment (PS3.7 C.4.2.1.4).
    """
    found = _association_session(event.assoc)
    if found is None:
        return STATUS_NOT_AUTHORIZED
    session, institution = found
    request = event.request
    try:
        store_dataset(
            request.DataSet.getvalue(),
            transfer_syntax=str(event.context.transfer_syntax),
            institution=institution,
            session=session,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
        )
    except Exception as exc:  # every object is stored or refused with its reason, never an unhandled 0xC211
        refused = refusal(exc)
        log.info("refused %s from %s: %s", request.AffectedSOPInstanceUID, session.source.label, refused.reason)
        return store_failure(refused)
    return STATUS_SUCCESS


def store_failure(refused: IngestError) -> Dataset:
    """A C-STORE failure status (PS3.4 B.2.3) with the reason in Error Comment (PS3.7 C.4.2.1.4)."""
    status = Dataset()
    status.Status = STORE_STATUS.get(refused.code, STATUS_CANNOT_UNDERSTAND)
    # Error Comment is LO: at most 64 characters of the default repertoire.
    status.ErrorComment = refused.reason.encode("ascii", "replace").decode("ascii")[:64]
    return status


# C-FIND ----------------------------------------------------------------------------

SKIP_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


def _identifier_value(element: Any) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def query_from_identifier(identifier: Dataset) -> tuple[q.Query, list[str], list[str]]:
    """A C-FIND/C-MOVE identifier as a query: (query, tags to return, unsupported keywords)."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in ("PATIENT", *q.LEVELS):
        raise q.QueryError(f"Query/Retrieve Level {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
    query = q.Query(level=level if level != "PATIENT" else q.STUDY)
    tags: list[str] = []
    unsupported = []
    for element in identifier:
        keyword = element.keyword
        if keyword in SKIP_KEYS or element.tag.group == 0x0002:
            continue
        tag = f"{element.tag:08X}"
        tags.append(tag)
        if element.VR == "SQ":
            if keyword == "RequestAttributesSequence" and element.value:
                for item_element in element.value[0]:
                    item_tag = f"{item_element.tag:08X}"
                    if item_tag in q.REQUEST_KEYS:
                        query.request_keys[item_tag] = _identifier_value(item_element)
            continue
        attribute = q.BY_TAG.get(tag)
        value = _identifier_value(element)
        if attribute is None or attribute.kind == "none":
            if value and value != "*":
                unsupported.append(keyword or tag)
            continue
        query.keys[tag] = value
    return query, tags, unsupported


def _response_charset(identifier: Dataset, datasets: list[dict[str, Any]]) -> str:
    """Answer in the query's character set when every value fits, else in UTF-8 (ISO_IR 192)."""
    text = json.dumps(datasets, ensure_ascii=False)
    if text.isascii():
        return str(identifier.get("SpecificCharacterSet", "") or "")
    wanted = identifier.get("SpecificCharacterSet")
    if wanted:
        from pydicom.charset import convert_encodings

        try:
            encodings = convert_encodings(
                wanted if isinstance(wanted, list | pydicom.multival.MultiValue) else [wanted]
            )
            if len(encodings) == 1:
                text.encode(encodings[0])
                return str(wanted)
        except (LookupError, UnicodeEncodeError, ValueError):
            pass
    return "ISO_IR 192"


def _institution_studies(institution: Institution) -> Any:
    return Study.objects.filter(institution=institution)


def handle_find(event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Query/Retrieve C-FIND at the PATIENT, STUDY, SERIES or IMAGE level (PS3.4 C.4.1)."""
    found = _association_session(event.assoc)
    if found is None:
        yield STATUS_NOT_AUTHORIZED, None
        return
    session, institution = found
    identifier = event.identifier
    try:
        query, tags, unsupported = query_from_identifier(identifier)
    except (q.QueryError, ValueError, TypeError) as exc:
        status = Dataset()
        status.Status = STATUS_IDENTIFIER_MISMATCH
        status.ErrorComment = str(exc)[:64]
        yield status, None
        return
    level = str(identifier.QueryRetrieveLevel).strip().upper()
    try:
        if level == "PATIENT":
            items = _find_patients(query, institution, tags)
        else:
            rows, _ = q.search(query, _institution_studies(institution), maximum=settings.QUERY_MAX_RESULTS)
            build = q.answer_builder(level, tags, q.Context())
            items = [build(row) for row in rows]
    except q.QueryError as exc:
        status = Dataset()
        status.Status = STATUS_IDENTIFIER_MISMATCH
        status.ErrorComment = str(exc)[:64]
        yield status, None
        return
    audit.record(
        "archive.dimse.search",
        actor_label=session.source.label,
        institution=institution,
        object_type="archive.query",
        object_id=level.lower(),
        address=session.source.address,
        detail={"level": level, "results": len(items), "unsupported_keys": unsupported},
    )
    charset = _response_charset(identifier, items)
    for item in items:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        ds = Dataset.from_json({tag: element for tag, element in item.items() if tag in tags})
        for tag in tags:  # a key asked for and unknown here is returned empty (PS3.4 C.4.1.1.3.2)
            if int(tag, 16) not in ds and int(tag, 16) in identifier:
                ds[int(tag, 16)] = identifier[int(tag, 16)]
                if ds[int(tag, 16)].VR != "SQ":
                    ds[int(tag, 16)].value = None
        ds.QueryRetrieveLevel = level
        if charset:
            ds.SpecificCharacterSet = charset
        if "RetrieveAETitle" in identifier:
            ds.RetrieveAETitle = settings.DICOM_AE_TITLE
        if "InstanceAvailability" in identifier:
            ds.InstanceAvailability = "ONLINE"
        yield STATUS_PENDING, ds
    yield STATUS_SUCCESS, None


PATIENT_TAGS = {
    "00100010": lambda p: q._pn(p.name),
    "00100020": lambda p: q._element("LO", [p.patient_id]),
    "00100021": lambda p: q._element("LO", [q._issuer(p.issuer)]),
    "00100030": lambda p: q._element("DA", [p.birth_date.strftime("%Y%m%d") if p.birth_date else ""]),
    "00100040": lambda p: q._element("CS", [p.sex]),
    "00201200": lambda p: q._element("IS", [p.num_studies]),  # Number of Patient Related Studies
}


def _find_patients(query: q.Query, institution: Institution, tags: list[str]) -> list[dict[str, Any]]:
    """Patient-level C-FIND (Patient Root): patients with studies matching the patient keys."""
    from django.db.models import Count

    patient_keys = {t: v for t, v in query.keys.items() if t in PATIENT_TAGS}
    studies = q.filter_queryset(_institution_studies(institution), q.Query(q.STUDY, keys=patient_keys))
    patients = (
        Patient.objects.filter(pk__in=studies.values("patient_id"))
        .annotate(num_studies=Count("studies"))
        .order_by("name", "patient_id")[: settings.QUERY_MAX_RESULTS]
    )
    return [{tag: PATIENT_TAGS[tag](p) for tag in tags if tag in PATIENT_TAGS} for p in patients]


# C-MOVE and C-GET ------------------------------------------------------------------------


def _matching_instances(identifier: Dataset, institution: Institution) -> list[Instance]:
    query, _, _ = query_from_identifier(identifier)
    level = str(identifier.QueryRetrieveLevel).strip().upper()
    unique = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }
    if q.is_universal(str(identifier.get(unique[level], "") or "")):
        raise q.QueryError(f"a {level} level retrieve needs a {unique[level]}")
    instance_query = q.Query(q.INSTANCE, keys=query.keys, request_keys=query.request_keys)
    qs = q.filter_queryset(q.base_queryset(q.INSTANCE, _institution_studies(institution)), instance_query)
    return list(qs)


def _retrieve_datasets(
    instances: list[Instance], accepted: Callable[[str], set[str]]
) -> Iterator[tuple[int, Dataset | None]]:
    """Pending (status, data set) for each instance, in a transfer syntax the peer accepted."""
    for instance in instances:
        overrides = instance.series.study.header_overrides or {}
        syntaxes = accepted(instance.sop_class_uid)
        try:
            ds = retrieve.load_dataset(instance, overrides)
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid)
            if instance.transfer_syntax_uid not in syntaxes:
                target = next((ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts in syntaxes), None)
                if target is not None and retrieve.can_decode(instance.transfer_syntax_uid):
                    ds = retrieve.transcode(ds, target)
        except (OSError, retrieve.CannotTranscode, ValueError) as exc:
            log.warning("cannot send %s: %s", instance.sop_instance_uid, exc)
            ds = Dataset()  # counted as a failed sub-operation
            ds.SOPInstanceUID = instance.sop_instance_uid
        yield STATUS_PENDING, ds


def _audit_retrieve(session: IngestSession, institution: Institution, instances: list[Instance], how: str) -> None:
    for study in {i.series.study for i in instances}:
        audit.record(
            "archive.study.retrieve",
            actor_label=session.source.label,
            institution=institution,
            object_type="archive.study",
            object_id=study.pk,
            patient_id=study.patient.patient_id,
            address=session.source.address,
            detail={"via": how, "instances": sum(1 for i in instances if i.series.study_id == study.pk)},
        )


def _failure(status_code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = status_code
    status.ErrorComment = comment[:64]
    return status


def _archived_wait(instances: list[Instance]) -> RestorePending | None:
    """``None`` when every instance can be sent now; else restore its study from the archive tier, waiting
    up to ``RESTORE_RETRIEVE_WAIT_SECONDS`` for the restore (the caller answers failure with the time left)."""
    by_study: dict[Any, list[Any]] = {}
    for instance in instances:
        by_study.setdefault(instance.series.study_id, []).append(instance.pk)
    deadline = time.monotonic() + settings.RESTORE_RETRIEVE_WAIT_SECONDS
    while True:
        waiting = None
        for study in Study.objects.filter(pk__in=list(by_study)):
            pending = pending_restore(study, by_study[study.pk])
            if pending is None:
                continue
            # Waiting is configured: recall the study here as soon as its store has restored it.
            if settings.RESTORE_RETRIEVE_WAIT_SECONDS > 0 and do_finish_restore(study.pk):
                continue
            waiting = pending
        if waiting is None or time.monotonic() >= deadline:
            return waiting
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def _restore_failure(pending: RestorePending) -> Dataset:
    return _failure(STATUS_UNABLE_TO_PROCESS, f"archived; retry in {pending.minutes} min")


def handle_move(event: Any) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2): send matching instances to a configured node of the caller's institution."""
    found = _association_session(event.assoc)
    if found is None:
        yield None, None
        return
    session, institution = found
    destination = DicomNode.objects.filter(
        ae_title=str(event.move_destination).strip(), institution=institution, is_active=True
    ).first()
    if destination is None or not destination.port:
        log.warning("C-MOVE from %s to unknown destination %r", session.source.label, event.move_destination)
        yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
        return
    try:
        instances = _matching_instances(event.identifier, institution)
    except (q.QueryError, ValueError, TypeError) as exc:
        yield destination.host or event.assoc.requestor.address, destination.port
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    accepted: dict[str, set[str]] = {}

    def remember(established: Any) -> None:
        for context in established.assoc.accepted_contexts:
            accepted.setdefault(str(context.abstract_syntax), set()).add(str(context.transfer_syntax[0]))

    if (pending := _archived_wait(instances)) is not None:
        contexts = _move_contexts(instances)
        address = destination.host or event.assoc.requestor.address
        yield address, destination.port, {"contexts": contexts, "evt_handlers": NODELAY_HANDLERS}
        yield 1  # pynetdicom answers a failure with its comment only once sub-operations began
        yield _restore_failure(pending), None
        return
    contexts = _move_contexts(instances)
    handlers = [*NODELAY_HANDLERS, (evt.EVT_ESTABLISHED, remember)]
    yield (
        destination.host or event.assoc.requestor.address,
        destination.port,
        {"contexts": contexts, "evt_handlers": handlers, "ae_title": destination.ae_title},
    )
    yield len(instances)
    _audit_retrieve(session, institution, instances, f"C-MOVE to {destination.ae_title}")
    for status, ds in _retrieve_datasets(instances, lambda sop_class: accepted.get(sop_class, set())):
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield status, ds


def _move_contexts(instances: list[Instance]) -> list[Any]:
    """Presentation contexts for the instances: each as stored, plus uncompressed fallbacks (at most 128)."""
    syntaxes: dict[str, list[str]] = {}
    for instance in instances:
        wanted = syntaxes.setdefault(instance.sop_class_uid, [])
        if instance.transfer_syntax_uid not in wanted:
            wanted.append(instance.transfer_syntax_uid)
    contexts = []
    for sop_class, stored in syntaxes.items():
        compressed = [ts for ts in stored if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
        for ts in compressed:
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts[:128]


def handle_get(event: Any) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3): send matching instances back over the same association."""
    found = _association_session(event.assoc)
    if found is None:
        yield 0
        yield STATUS_NOT_AUTHORIZED, None
        return
    session, institution = found
    try:
        instances = _matching_instances(event.identifier, institution)
    except (q.QueryError, ValueError, TypeError) as exc:
        yield 0
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    if (pending := _archived_wait(instances)) is not None:
        yield 1  # with 0 sub-operations pynetdicom answers success
        yield _restore_failure(pending), None
        return
    accepted: dict[str, set[str]] = {}
    for context in event.assoc.accepted_contexts:
        if context.as_scu:
            accepted.setdefault(str(context.abstract_syntax), set()).add(str(context.transfer_syntax[0]))
    yield len(instances)
    _audit_retrieve(session, institution, instances, "C-GET")
    for status, ds in _retrieve_datasets(instances, lambda sop_class: accepted.get(sop_class, set())):
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield status, ds


def services() -> list[DimseService]:
    """The archive's DICOM services (settings.DIMSE_SERVICE_PROVIDERS lists this)."""
    storage_classes = tuple(str(context.abstract_syntax) for context in AllStoragePresentationContexts)
    return [
        DimseService(evt.EVT_C_STORE, storage_classes, handle_store, tuple(STORAGE_SYNTAXES)),
        DimseService(
            evt.EVT_C_FIND,
            (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind),
            handle_find,
        ),
        DimseService(
            evt.EVT_C_MOVE,
            (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove),
            handle_move,
        ),
        DimseService(
            evt.EVT_C_GET,
            (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet),
            handle_get,
        ),
    ]
