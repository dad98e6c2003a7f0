"""The online tier: recent studies kept on the edge's disk, and Query/Retrieve of them.

Every instance the edge receives stays on local disk for fast access. The
sweep (:meth:`OnlineTier.evict`) removes local copies of studies older than
``EDGE_ONLINE_MAX_AGE_DAYS``, and then the least recently received studies
while the tier is over ``EDGE_ONLINE_MAX_GB``, with two rules:

* only ``forwarded`` instances are removed — the cloud confirmed it holds
  the same SHA-256; pending and quarantined ones stay whatever the limits;
* a study being read (a C-MOVE or C-GET in progress) or read within
  ``EDGE_READ_GUARD_MINUTES`` is left alone.

C-FIND (Patient Root and Study Root, PS3.4 C.4.1) matches the resident
instances with the shared matching code (:mod:`pacs_cloud.lib.dicom_match`).
C-MOVE and C-GET (C.4.2, C.4.3) send what is resident; for instances already
evicted they first fetch the study back from the cloud over WADO-RS, check
that each object is the one the edge forwarded (same SHA-256) and keep it
again, so the peer cannot tell.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from archive import dimse
from archive.ingest import _meta_end
from pacs_cloud.lib import dicom_datetime
from pacs_cloud.lib.dicom_match import (
    InvalidKey,
    check_keys,
    element_text,
    is_universal,
    record_matches,
    response_identifier,
)

from .client import CloudUnavailable
from .outbox import EVICTED, FORWARDED
from .scp import write_durably

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


@dataclass
class Resident:
    """One instance as the outbox knows it (duck-types what ``dimse._move_contexts`` reads)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: str
    sha256: str
    state: str
    attributes: dict[str, str]


class OnlineTier:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.outbox = gateway.outbox
        self.max_age = settings.EDGE_ONLINE_MAX_AGE_DAYS * 86400
        self.max_bytes = int(settings.EDGE_ONLINE_MAX_GB * 1024**3)
        self.guard = settings.EDGE_READ_GUARD_MINUTES * 60
        self._lock = threading.Lock()
        self._reading: dict[str, int] = {}
        self.evicted = 0
        self.restored = 0

    # Readers and eviction ---------------------------------------------------------------

    @contextmanager
    def reading(self, study_uids: set[str]) -> Iterator[None]:
        """Hold ``study_uids`` resident while the caller reads them."""
        with self._lock:
            for uid in study_uids:
                self._reading[uid] = self._reading.get(uid, 0) + 1
        try:
            yield
        finally:
            now = time.time()
            with self._lock:
                for uid in study_uids:
                    self._reading[uid] -= 1
                    if not self._reading[uid]:
                        del self._reading[uid]
            with self.outbox.transaction() as db:
                for uid in study_uids:
                    db.execute(
                        "INSERT OR REPLACE INTO studies_read (study_instance_uid, read_at) VALUES (?, ?)", (uid, now)
                    )

    def evict(self, now: float | None = None) -> int:
        """One sweep of the online tier; returns how many local copies were removed."""
        now = time.time() if now is None else now
        studies = self.outbox.query(
            "SELECT i.study_instance_uid, MAX(i.received_at),"
            " SUM(CASE WHEN i.state != 'evicted' THEN i.size ELSE 0 END), r.read_at"
            " FROM instances i LEFT JOIN studies_read r ON r.study_instance_uid = i.study_instance_uid"
            " GROUP BY i.study_instance_uid ORDER BY MAX(i.received_at)"
        )
        resident = sum(row[2] for row in studies)
        removed = 0
        for study_uid, received_at, size, read_at in studies:
            too_old = now - received_at > self.max_age
            if not size or not (too_old or resident > self.max_bytes):
                continue
            with self._lock:
                if study_uid in self._reading or (read_at is not None and now - read_at < self.guard):
                    continue
                rows = self.outbox.query(
                    "SELECT sop_instance_uid, path, size FROM instances WHERE study_instance_uid = ? AND state = ?",
                    (study_uid, FORWARDED),
                )
                with self.outbox.transaction() as db:
                    for uid, _, _ in rows:
                        db.execute(
                            "UPDATE instances SET state = ? WHERE sop_instance_uid = ? AND state = ?",
                            (EVICTED, uid, FORWARDED),
                        )
                # Files go after the commit: a crash in between leaves a file the
                # outbox calls evicted (harmless), never the reverse.
                for _, path, bytes_ in rows:
                    Path(path).unlink(missing_ok=True)
                    resident -= bytes_
                    removed += 1
        self.evicted += removed
        return removed

    # Bringing evicted studies back --------------------------------------------------------

    def restore(self, study_uid: str) -> int:
        """Fetch the study's evicted instances back from the cloud; returns how many came back."""
        wanted = {
            uid: (path, sha)
            for uid, path, sha in self.outbox.query(
                "SELECT sop_instance_uid, path, sha256 FROM instances WHERE study_instance_uid = ? AND state = ?",
                (study_uid, EVICTED),
            )
        }
        if not wanted:
            return 0
        back = 0
        folder = self.gateway.data_dir / "incoming"
        for data, spilled in self.gateway.cloud.retrieve_study(study_uid, folder):
            try:
                content = data if data is not None else Path(spilled).read_bytes()  # type: ignore[arg-type]
            finally:
                if spilled is not None:
                    spilled.unlink(missing_ok=True)
            end = _meta_end(content)
            if end is None:
                continue
            meta = read_dataset(io.BytesIO(content[132:end]), False, True)
            uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
            if uid not in wanted:
                continue
            path, sha = wanted[uid]
            if hashlib.sha256(content).hexdigest() != sha:
                log.warning("the cloud's copy of %s differs from what was forwarded; not restored", uid)
                continue
            write_durably(Path(path), [content])
            with self.outbox.transaction() as db:
                db.execute(
                    "UPDATE instances SET state = ? WHERE sop_instance_uid = ? AND state = ?", (FORWARDED, uid, EVICTED)
                )
            back += 1
        self.restored += back
        return back

    # Query/Retrieve -----------------------------------------------------------------------

    def _rows(self, identifier: Dataset, *, resident_only: bool) -> list[Resident]:
        sql = (
            "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, transfer_syntax_uid,"
            " path, sha256, state, attributes FROM instances WHERE state != 'quarantined'"
        )
        params: list[Any] = []
        for keyword, column in (
            ("StudyInstanceUID", "study_instance_uid"),
            ("SeriesInstanceUID", "series_instance_uid"),
            ("SOPInstanceUID", "sop_instance_uid"),
        ):
            text = element_text(identifier[keyword]) if keyword in identifier else ""
            if not is_universal(text):
                values = [v.strip() for v in text.split("\\")]
                sql += f" AND {column} IN ({', '.join('?' * len(values))})"
                params += values
        if resident_only:
            sql += " AND state != 'evicted'"
        rows = self.outbox.query(sql + " ORDER BY received_at", params)
        return [
            Resident(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], json.loads(row[8])) for row in rows
        ]

    def _records(self, rows: list[Resident], level: str) -> list[dict[str, Any]]:
        groups: dict[str, list[Resident]] = {}
        key = {"PATIENT": "PatientID", "STUDY": "study", "SERIES": "series", "IMAGE": "sop"}[level]
        for row in rows:
            name = {
                "PatientID": row.attributes.get("PatientID", ""),
                "study": row.study_instance_uid,
                "series": row.series_instance_uid,
                "sop": row.sop_instance_uid,
            }[key]
            groups.setdefault(name, []).append(row)
        records = []
        for members in groups.values():
            first = members[0]
            a = first.attributes
            record: dict[str, Any] = {
                "QueryRetrieveLevel": level,
                "RetrieveAETitle": self.gateway.ae_title,
                "PatientID": a.get("PatientID", ""),
                "PatientName": a.get("PatientName", ""),
                "PatientBirthDate": dicom_datetime.parse_da(a.get("PatientBirthDate")),
                "PatientSex": a.get("PatientSex", ""),
            }
            if level != "PATIENT":
                record.update(
                    StudyInstanceUID=first.study_instance_uid,
                    StudyDate=dicom_datetime.parse_da(a.get("StudyDate")),
                    StudyTime=dicom_datetime.parse_tm(a.get("StudyTime")),
                    AccessionNumber=a.get("AccessionNumber", ""),
                    StudyID=a.get("StudyID", ""),
                    StudyDescription=a.get("StudyDescription", ""),
                    ModalitiesInStudy=sorted({m.attributes.get("Modality", "") for m in members} - {""}),
                    NumberOfStudyRelatedSeries=str(len({m.series_instance_uid for m in members})),
                    NumberOfStudyRelatedInstances=str(len(members)),
                )
            if level in ("SERIES", "IMAGE"):
                record.update(
                    SeriesInstanceUID=first.series_instance_uid,
                    Modality=a.get("Modality", ""),
                    SeriesNumber=a.get("SeriesNumber", ""),
                    SeriesDescription=a.get("SeriesDescription", ""),
                    NumberOfSeriesRelatedInstances=str(len(members)),
                )
            if level == "IMAGE":
                record.update(
                    SOPInstanceUID=first.sop_instance_uid,
                    SOPClassUID=first.sop_class_uid,
                    InstanceNumber=a.get("InstanceNumber", ""),
                )
            records.append(record)
        return records

    def handle_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """C-FIND over the resident instances."""
        try:
            identifier = event.identifier
            level = str(identifier.QueryRetrieveLevel).strip().upper()
            if level not in LEVELS:
                raise InvalidKey("QueryRetrieveLevel", f"{level!r} is not a level")
            check_keys(identifier)
        except Exception as exc:
            yield _failure(dimse.STATUS_IDENTIFIER_MISMATCH, str(exc)), None
            return
        for record in self._records(self._rows(identifier, resident_only=True), level):
            if event.is_cancelled:
                yield dimse.STATUS_CANCEL, None
                return
            if record_matches(identifier, record):
                yield dimse.STATUS_PENDING, response_identifier(identifier, record)

    def _to_send(self, identifier: Dataset) -> list[Resident]:
        level = str(identifier.QueryRetrieveLevel).strip().upper()
        if level not in LEVELS or is_universal(str(identifier.get(UNIQUE_KEY[level], "") or "")):
            raise ValueError(f"a {level} level retrieve needs a {UNIQUE_KEY.get(level, 'unique key')}")
        rows = self._rows(identifier, resident_only=False)
        if level == "PATIENT":
            rows = [r for r in rows if r.attributes.get("PatientID") == str(identifier.PatientID)]
        return rows

    def _datasets(self, rows: list[Resident]) -> Iterator[tuple[int, Dataset]]:
        studies = {r.study_instance_uid for r in rows if r.state == EVICTED}
        for study_uid in studies:
            try:
                self.restore(study_uid)
            except CloudUnavailable as exc:
                log.warning("study %s could not be fetched back from the cloud: %s", study_uid, exc)
        for row in rows:
            ds: Dataset
            try:
                ds = pydicom.dcmread(row.path)
            except OSError as exc:
                log.warning("cannot send %s: %s", row.sop_instance_uid, exc)
                ds = Dataset()  # counted as a failed sub-operation
                ds.SOPInstanceUID = row.sop_instance_uid
            yield dimse.STATUS_PENDING, ds

    def handle_move(self, event: Any) -> Iterator[Any]:
        """C-MOVE to a DICOM node of the institution (from the replica) that has a port."""
        destination = self.gateway.replica.node(str(event.move_destination).strip())
        if destination is None or not destination[1]:
            yield None, None  # 0xA801 Move destination unknown
            return
        host, port, _ = destination
        try:
            rows = self._to_send(event.identifier)
        except (ValueError, AttributeError, TypeError) as exc:
            yield host or event.assoc.requestor.address, port
            yield _failure(dimse.STATUS_IDENTIFIER_MISMATCH, str(exc)), None
            return
        yield (
            host or event.assoc.requestor.address,
            port,
            {
                "contexts": dimse._move_contexts(rows),  # type: ignore[arg-type]
                "evt_handlers": dimse.NODELAY_HANDLERS,
                "ae_title": str(event.move_destination).strip(),
            },
        )
        yield len(rows)
        with self.reading({r.study_instance_uid for r in rows}):
            for status, ds in self._datasets(rows):
                if event.is_cancelled:
                    yield dimse.STATUS_CANCEL, None
                    return
                yield status, ds

    def handle_get(self, event: Any) -> Iterator[Any]:
        """C-GET: the instances back over the caller's own association."""
        try:
            rows = self._to_send(event.identifier)
        except (ValueError, AttributeError, TypeError) as exc:
            yield 0
            yield _failure(dimse.STATUS_IDENTIFIER_MISMATCH, str(exc)), None
            return
        yield len(rows)
        with self.reading({r.study_instance_uid for r in rows}):
            for status, ds in self._datasets(rows):
                if event.is_cancelled:
                    yield dimse.STATUS_CANCEL, None
                    return
                yield status, ds

    def services(self) -> list[dimse.DimseService]:
        return [
            dimse.DimseService(
                evt.EVT_C_FIND,
                (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind),
                self.handle_find,
            ),
            dimse.DimseService(
                evt.EVT_C_MOVE,
                (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove),
                self.handle_move,
            ),
            dimse.DimseService(
                evt.EVT_C_GET,
                (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet),
                self.handle_get,
            ),
        ]


def _failure(status_code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = status_code
    status.ErrorComment = comment[:64]
    return status
