"""The edge's local database: its own SQLite file (``$PACS_DATA_DIR/edge/outbox.sqlite3``).

It holds, through Python's ``sqlite3`` module (the edge needs no database
server and does not use Django's ORM):

* ``instances``: every instance the edge acknowledged, where its file is,
  its SHA-256 and its forwarding state — ``pending`` (waiting for the cloud),
  ``forwarded`` (the cloud confirmed the same SHA-256: may be evicted),
  ``quarantined`` (refused by the cloud for good, with the reason) and
  ``evicted`` (the local copy was removed from the online tier);
* ``studies_read``: when each study was last read through the edge (the
  online tier never evicts a study being read);
* ``worklist``, ``nodes`` and ``mpps``: the replica of the institution's
  worklist and DICOM nodes, and the MPPS messages waiting to be relayed;
* ``state``: small values (the sync cursor, the time of the last sync).

The journal is a WAL with ``synchronous=FULL``: when :meth:`Outbox.record`
returns, the row survives a crash or a power cut, so an instance is
acknowledged to the modality only after that.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING, FORWARDED, QUARANTINED, EVICTED = "pending", "forwarded", "quarantined", "evicted"

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    forwarded_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    status_code INTEGER,
    reported INTEGER NOT NULL DEFAULT 0,
    -- the study's identifying attributes, for C-FIND on the online tier
    attributes TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS instances_due ON instances (state, next_attempt_at, received_at);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS studies_read (study_instance_uid TEXT PRIMARY KEY, read_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS worklist (
    accession_key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    scheduled_date TEXT NOT NULL,
    station_ae_title TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS nodes (ae_title TEXT PRIMARY KEY, host TEXT NOT NULL, port INTEGER, character_set TEXT);
CREATE TABLE IF NOT EXISTS mpps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    ae_title TEXT NOT NULL,
    dataset TEXT NOT NULL,
    queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    relayed_at REAL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Row:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    sha256: str
    received_at: float
    state: str
    attempts: int


# The columns of Row, in order (a constant: no value is ever formatted into SQL).
DUE_SQL = (
    "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, transfer_syntax_uid, path,"
    " size, sha256, received_at, state, attempts FROM instances WHERE state = ? AND next_attempt_at <= ?"
    " ORDER BY received_at LIMIT ?"
)


class Outbox:
    """The edge's SQLite database; safe to share between threads (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # Instances --------------------------------------------------------------------------

    def record(
        self,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        transfer_syntax_uid: str,
        path: str,
        size: int,
        sha256: str,
        calling_ae: str = "",
        attributes: dict[str, Any] | None = None,
    ) -> bool:
        """Record an acknowledged instance (durably, before the modality hears success).

        The same object again changes nothing (False). Other content under the
        same SOP Instance UID replaces the local copy and is forwarded anew: the
        cloud decides whether it is a conflict.
        """
        now = time.time()
        with self.transaction() as db:
            found = db.execute(
                "SELECT sha256, state FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
            if found is not None and found[0] == sha256 and found[1] != EVICTED:
                return False
            db.execute(
                "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, transfer_syntax_uid, path, size, sha256, calling_ae, received_at, state,"
                " attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sop_instance_uid,
                    sop_class_uid,
                    study_instance_uid,
                    series_instance_uid,
                    transfer_syntax_uid,
                    path,
                    size,
                    sha256,
                    calling_ae,
                    now,
                    PENDING if found is None or found[0] != sha256 else FORWARDED,
                    json.dumps(attributes or {}),
                ),
            )
        return True

    def forget(self, uid: str, sha256: str) -> None:
        """Remove a pending row whose file could not be written (the modality was told so)."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM instances WHERE sop_instance_uid = ? AND sha256 = ? AND state = ?", (uid, sha256, PENDING)
            )

    def due(self, limit: int, exclude: set[str], now: float | None = None) -> list[Row]:
        """Pending instances whose retry time has come, oldest first, none of ``exclude``."""
        now = time.time() if now is None else now
        rows = self.query(DUE_SQL, (PENDING, now, limit + len(exclude)))
        found = [Row(*r) for r in rows if r[0] not in exclude]
        return found[:limit]

    def next_due_at(self) -> float | None:
        rows = self.query("SELECT MIN(next_attempt_at) FROM instances WHERE state = ?", (PENDING,))
        return rows[0][0]

    def mark_forwarded(self, confirmed: dict[str, str]) -> int:
        """Instances the cloud confirmed with this same SHA-256 (only those) are forwarded."""
        now = time.time()
        with self.transaction() as db:
            done = 0
            for uid, sha256 in confirmed.items():
                done += db.execute(
                    "UPDATE instances SET state = ?, forwarded_at = ?, reason = '' "
                    "WHERE sop_instance_uid = ? AND sha256 = ? AND state = ?",
                    (FORWARDED, now, uid, sha256, PENDING),
                ).rowcount
        return done

    def retry_later(self, uids: Iterable[str], delays: dict[str, float], reason: str) -> None:
        now = time.time()
        with self.transaction() as db:
            for uid in uids:
                db.execute(
                    "UPDATE instances SET attempts = attempts + 1, next_attempt_at = ?, reason = ? "
                    "WHERE sop_instance_uid = ? AND state = ?",
                    (now + delays.get(uid, 1.0), reason[:300], uid, PENDING),
                )

    def quarantine(self, uid: str, sha256: str, reason: str, status_code: int | None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE instances SET state = ?, reason = ?, status_code = ?, reported = 0 "
                "WHERE sop_instance_uid = ? AND sha256 = ? AND state = ?",
                (QUARANTINED, reason[:300], status_code, uid, sha256, PENDING),
            )

    def unreported_quarantine(self) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT sop_instance_uid, study_instance_uid, sha256, reason, status_code, received_at FROM instances "
            "WHERE state = ? AND reported = 0 LIMIT 500",
            (QUARANTINED,),
        )
        return [
            {
                "sop_instance_uid": r[0],
                "study_instance_uid": r[1],
                "sha256": r[2],
                "reason": r[3],
                "status_code": r[4],
                "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(r[5])),
            }
            for r in rows
        ]

    def mark_reported(self, items: list[dict[str, Any]]) -> None:
        with self.transaction() as db:
            for item in items:
                db.execute(
                    "UPDATE instances SET reported = 1 WHERE sop_instance_uid = ? AND sha256 = ?",
                    (item["sop_instance_uid"], item["sha256"]),
                )

    def counts(self) -> dict[str, int]:
        return dict(self.query("SELECT state, COUNT(*) FROM instances GROUP BY state"))  # type: ignore[arg-type]

    def oldest_pending_age(self, now: float | None = None) -> float | None:
        rows = self.query("SELECT MIN(received_at) FROM instances WHERE state = ?", (PENDING,))
        oldest = rows[0][0]
        return None if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)

    def quarantined(self, limit: int = 200) -> list[tuple]:
        return self.query(
            "SELECT sop_instance_uid, study_instance_uid, reason, received_at FROM instances WHERE state = ? "
            "ORDER BY received_at DESC LIMIT ?",
            (QUARANTINED, limit),
        )

    # Small values -----------------------------------------------------------------------

    def get_state(self, key: str, default: str = "") -> str:
        rows = self.query("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_state(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))
