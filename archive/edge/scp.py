"""The edge's DICOM services on the edge AE: C-ECHO and C-STORE (store-and-forward).

Built on the shared framework (:mod:`archive.dimse`: presentation contexts,
dispatch, TCP_NODELAY, pynetdicom tuning); only the parts that read the
cloud's database are the edge's own: a calling AE is accepted when it is one
of the institution's DICOM nodes in the replica (:mod:`.replica`), and a
C-STORE is written to local disk and the outbox instead of the archive.

C-STORE (PS3.4 Annex B): the data set is kept exactly as received behind
the same File Meta Information the cloud writes
(:func:`archive.ingest.file_meta_header`), so the edge's file and the
cloud's object have the same SHA-256. The file is written and fsynced
(:func:`write_durably`) while its outbox row commits; only when both are
durable does the modality hear Success. Query/Retrieve at the edge is in
:mod:`.tier`, the worklist in ``worklist.edge``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from archive import dimse
from archive.ingest import IngestError, _read_bare, _read_elements, _require_uids, _text, file_meta_header, refusal
from pacs_cloud.lib.uids import is_valid_uid

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

# Study-level attributes kept beside each instance, for C-FIND on the online tier.
STUDY_KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ModalitiesInStudy",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
)


@dataclass
class Received:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: Path
    created: bool


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_fsynced(path: Path, parts: list[bytes], mode: str) -> None:
    with open(path, mode) as out:
        for part in parts:
            out.write(part)
        out.flush()
        os.fsync(out.fileno())


def write_durably(path: Path, parts: list[bytes]) -> None:
    """Write ``parts`` to ``path`` so that it survives a crash once this returns.

    A new file is written in place and fsynced (data and inode): on the
    journaling file systems an edge runs on (ext4, XFS) that fsync also
    commits the file's directory entry, so the common case pays one fsync,
    not a rename and a second, directory fsync. Folders made for a new study
    or series are fsynced in their parents once. An existing file (the same
    instance sent again) is replaced atomically (temporary file, fsync,
    rename, folder fsync), so a reader never sees it half rewritten.
    """
    folder = path.parent
    made = not folder.exists()
    if made:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        _write_fsynced(path, parts, "xb")
    except FileExistsError:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            _write_fsynced(temporary, parts, "wb")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_folder(folder)
    if made:
        _fsync_folder(folder)
        _fsync_folder(folder.parent)
        _fsync_folder(folder.parent.parent)


# The file's fsync runs here while the receiving thread commits the outbox row:
# the two waits for the disk overlap instead of adding up.
_writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="edge-write")


def store_received(
    gateway: Gateway,
    dataset: bytes,
    *,
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae: str = "",
) -> Received:
    """Keep one received data set on local disk and in the outbox; raises IngestError to refuse it."""
    if not is_valid_uid(sop_class_uid) or not is_valid_uid(sop_instance_uid):
        raise IngestError("the request's SOP Class or SOP Instance UID is not a valid UID", code="bad_uid")
    if len(dataset) > gateway.max_instance_bytes:
        raise IngestError(f"{len(dataset)} bytes is over the limit for one instance", code="too_large")
    if transfer_syntax == "1.2.840.10008.1.2.1.99":  # deflated: read through a Part 10 header
        import io

        header = file_meta_header(sop_class_uid, sop_instance_uid, transfer_syntax)
        ds, _, _ = _read_elements(io.BytesIO(header + dataset), "the data set", 0, 0)
    else:
        ds, _, _ = _read_bare(dataset, transfer_syntax)
    study_uid, series_uid, sop_uid, sop_class = _require_uids(ds)
    if sop_uid != sop_instance_uid or sop_class != sop_class_uid:
        raise IngestError("the data set's SOP Instance or Class UID differs from the request's", code="inconsistent")
    header = file_meta_header(sop_class_uid, sop_instance_uid, transfer_syntax)
    path = gateway.online_dir / study_uid / series_uid / f"{sop_uid}.dcm"
    # The forwarder leaves the instance alone until its file is durable: the
    # row may commit first (the two fsyncs overlap), the modality hears
    # success only after both.
    with gateway.forwarder.holding(sop_uid):
        written = _writers.submit(write_durably, path, [header, dataset])
        try:
            digest = hashlib.sha256(header)
            digest.update(dataset)
            attributes = {key: _text(ds, key) for key in STUDY_KEYS if key in ds}
            created = gateway.outbox.record(
                sop_instance_uid=sop_uid,
                sop_class_uid=sop_class,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                transfer_syntax_uid=transfer_syntax,
                path=str(path),
                size=len(header) + len(dataset),
                sha256=digest.hexdigest(),
                calling_ae=calling_ae,
                attributes=attributes,
            )
        finally:
            try:
                written.result()
            except OSError as exc:
                log.exception("could not keep %s", sop_uid)
                # Not acknowledged: the row must not outlive the failed write.
                gateway.outbox.forget(sop_uid, digest.hexdigest())
                raise IngestError(f"the edge could not store the object: {exc}", code="storage") from exc
    gateway.forwarder.received()
    return Received(sop_uid, study_uid, series_uid, path, created)


def _store_handler(gateway: Gateway) -> Callable[[Any], Any]:
    def handle_store(event: Any) -> Any:
        request = event.request
        try:
            store_received(
                gateway,
                request.DataSet.getvalue(),
                transfer_syntax=str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                calling_ae=dimse.calling_ae_title(event.assoc),
            )
        except Exception as exc:  # stored or refused with its reason, never an unhandled 0xC211
            refused = refusal(exc)
            log.info("refused %s: %s", request.AffectedSOPInstanceUID, refused.reason)
            return dimse.store_failure(refused)
        return dimse.STATUS_SUCCESS

    return handle_store


def _requested_handler(gateway: Gateway) -> Callable[[Any], None]:
    def handle_requested(event: Any) -> None:
        ae_title = dimse.calling_ae_title(event.assoc)
        if not gateway.replica.allows(ae_title, event.assoc.requestor.address):
            log.warning("refused association from unknown AE %r at %s", ae_title, event.assoc.requestor.address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # PS3.8 9.3.4: calling AE title not recognized
            event.assoc.kill()

    return handle_requested


def edge_services(gateway: Gateway) -> list[dimse.DimseService]:
    from pynetdicom.presentation import AllStoragePresentationContexts

    storage_classes = tuple(str(context.abstract_syntax) for context in AllStoragePresentationContexts)
    found = [
        dimse.DimseService(evt.EVT_C_ECHO, (dimse.Verification,), lambda event: dimse.STATUS_SUCCESS),
        dimse.DimseService(evt.EVT_C_STORE, storage_classes, _store_handler(gateway), tuple(dimse.STORAGE_SYNTAXES)),
    ]
    for extra in gateway.extra_services():
        found.append(extra)
    return found


# The cloud's handlers that read its own database; the edge has its own.
_CLOUD_ONLY = {dimse._handle_association_requested, dimse._forget_association}


def start(gateway: Gateway, host: str, port: int) -> Any:
    """Serve the edge AE in background threads; returns the server (``shutdown()`` stops it)."""
    import threading

    dimse.tune_pynetdicom()
    ae, handlers = dimse.build_ae(gateway.ae_title, edge_services(gateway))
    handlers = [(event, h) for event, h in handlers if h not in _CLOUD_ONLY]
    handlers.append((evt.EVT_REQUESTED, _requested_handler(gateway)))
    server = ae.make_server(
        (host, port),
        evt_handlers=handlers,  # type: ignore[arg-type]
        server_class=dimse.NoDelayAssociationServer,
    )
    thread = threading.Thread(target=server.serve_forever, name="edge-dimse", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
