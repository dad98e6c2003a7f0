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

import json
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from django.conf import settings
from django.db import close_old_connections
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
from pynetdicom import association as _pynetdicom_association
from pynetdicom import dul as _pynetdicom_dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
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
from pynetdicom.transport import AssociationServer, AssociationSocket, ThreadedAssociationServer

from pacs_cloud import audit
from pacs_cloud.models import Institution

from . import query as q
from . import retrieve
from .ingest import IngestError, IngestSession, Source, store_dataset
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


def calling_node(assoc: Any) -> DicomNode | None:
    """The configured node behind an association, or None for an unknown peer."""
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
    close_old_connections()
    if calling_node(event.assoc) is None:
        log.warning(
            "refused association from unknown AE %r at %s", calling_ae_title(event.assoc), event.assoc.requestor.address
        )
        # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognized
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()  # lets the DUL flush the A-ASSOCIATE-RJ before the socket closes


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
        _check_connections()
        request = event.request
        sop_class = str(
            getattr(request, "AffectedSOPClassUID", None) or getattr(request, "RequestedSOPClassUID", None) or ""
        )
        service = by_class.get(sop_class) or (services[0] if len(services) == 1 else None)
        if service is None:
            return 0x0122  # SOP class not supported
        return service.handler(event, *args)

    return dispatch


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
    trip waits ~40 ms for Nagle's algorithm and the peer's delayed ACK."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = AssociationServer.get_request(self)
        set_nodelay(client)
        return client, address


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


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` reading straight into one buffer.

    pynetdicom reads a PDU 4 KiB at a time; a 128 KiB P-DATA PDU then costs
    32 system calls and as many buffer extensions. Same contract: the bytes
    read, fewer than asked only when the peer closed the connection.
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    while read < nr_bytes:
        count = self.socket.recv_into(view[read:], nr_bytes - read)  # type: ignore[union-attr]
        if not count:
            del view
            return buffer[:read]
        read += count
    return buffer


def _copy_context(self: PresentationContext, memo: dict) -> PresentationContext:
    """``deepcopy`` of a presentation context without re-validating every UID.

    pynetdicom deep-copies the supported contexts for every association; with
    every storage SOP class in every transfer syntax that re-creates (and
    re-validates) thousands of UID strings, tens of milliseconds per
    association. UIDs are immutable strings: copying the lists is enough.
    """
    new = PresentationContext.__new__(PresentationContext)
    new.__dict__.update({k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()})
    return new


def tune_pynetdicom() -> None:
    """Process-wide latency tuning of pynetdicom for a DICOM service process.

    Its loops wait for events instead of polling (:class:`_EventClock`), PDUs
    are read into one buffer (:func:`_recv`) and presentation contexts are
    copied cheaply per association (:func:`_copy_context`).
    ``DIMSE_EVENT_WAITS=False`` leaves pynetdicom as it is.
    """
    if not settings.DIMSE_EVENT_WAITS:
        return
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
    PresentationContext.__deepcopy__ = _copy_context  # type: ignore[attr-defined]
    clock = _EventClock()
    _pynetdicom_association.time = clock  # type: ignore[assignment]
    _pynetdicom_dul.time = clock  # type: ignore[assignment]


def build_ae(ae_title: str, services: list[DimseService]) -> tuple[AE, list[tuple[Any, Callable[..., Any]]]]:
    """An AE supporting every service's contexts, and the event handlers to bind."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 0  # no limit: fewer PDUs for large instances
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
    ae_title: str, host: str, port: int, providers: Iterable[str] | None = None
) -> ThreadedAssociationServer:
    """Start serving in background threads; returns the server (``shutdown()`` stops it)."""
    tune_pynetdicom()
    ae, handlers = build_ae(ae_title, collect_services(providers))
    server = ae.make_server((host, port), evt_handlers=handlers, server_class=NoDelayAssociationServer)
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
    session = IngestSession(Source("dimse", node.ae_title, address=assoc.requestor.address))
    with _sessions_lock:
        _sessions[key] = (session, node.institution)
    return session, node.institution


def _forget_association(event: Any) -> None:
    with _sessions_lock:
        _sessions.pop(id(event.assoc), None)


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
    except IngestError as exc:
        log.info("refused %s from %s: %s", request.AffectedSOPInstanceUID, session.source.label, exc.reason)
        status = Dataset()
        status.Status = STORE_STATUS.get(exc.code, STATUS_CANNOT_UNDERSTAND)
        status.ErrorComment = exc.reason[:64]
        return status
    return STATUS_SUCCESS


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
