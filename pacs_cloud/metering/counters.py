"""Writing the usage counters: an upsert per event, or a buffered add flushed in batches.

:func:`record_usage` and :func:`set_usage` write at once, in the caller's
transaction (a rolled-back signature is not counted). :func:`count_later`
only adds to a per-process buffer; a background thread writes the buffer in
one statement at most every ``FLUSH_SECONDS`` (and at exit), so the C-STORE
and rendering paths never wait for the database. What a hard kill of a
process loses is at most that last second's counts.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from django.db import DatabaseError, connection
from django.db.models import Field
from django.utils import timezone

from ..lib.local_time import zone
from .models import UsageCounter

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
_ZONE_SECONDS = 300.0  # how long a process trusts an institution's time zone it looked up

Key = tuple[UUID, dt.date, str, str]  # institution, local day, metric, dimension

_TABLE = UsageCounter._meta.db_table
_UPSERT = (
    f"INSERT INTO {_TABLE} (institution_id, day, metric, dimension, quantity, updated_at) VALUES {{rows}} "  # noqa: S608
    "ON CONFLICT (institution_id, day, metric, dimension) DO UPDATE SET "
    f"quantity = {{quantity}}, updated_at = EXCLUDED.updated_at"
)


def _zone_of(institution: Any) -> dt.tzinfo:
    name = getattr(institution, "time_zone", None)
    if name is not None:
        return zone(name)
    return zone(_zone_name(_uuid(institution)))


_zones: dict[UUID, tuple[float, str]] = {}


def _zone_name(institution_id: UUID) -> str:
    now = time.monotonic()
    known = _zones.get(institution_id)
    if known is not None and known[0] > now:
        return known[1]
    from ..models import Institution

    name = Institution.objects.filter(pk=institution_id).values_list("time_zone", flat=True).first()
    if name is None:
        return "UTC"  # not visible to this connection (yet): not remembered
    _zones[institution_id] = (now + _ZONE_SECONDS, name)
    return name


def _uuid(institution: Any) -> UUID:
    value = getattr(institution, "pk", institution)
    return value if isinstance(value, UUID) else UUID(str(value))


def local_day(institution: Any, at: dt.datetime | None = None) -> dt.date:
    """The institution's calendar date at ``at`` (now by default)."""
    return (at or timezone.now()).astimezone(_zone_of(institution)).date()


_COLUMNS = ("institution_id", "day", "metric", "dimension", "quantity", "updated_at")
_FIELDS: list[Field] = [UsageCounter._meta.get_field(name) for name in _COLUMNS]  # type: ignore[misc]


def _write(rows: dict[Key, int], *, replace: bool) -> None:
    if not rows:
        return
    now = timezone.now()
    # One row per key (PostgreSQL refuses to update one row twice in one
    # statement), in a fixed order so two writers lock rows in the same order.
    params: list[Any] = []
    for (institution_id, day, metric, dimension), count in sorted(rows.items(), key=lambda r: str(r[0])):
        row = (institution_id, day, metric, dimension, count, now)
        params += [f.get_db_prep_save(value, connection) for f, value in zip(_FIELDS, row, strict=True)]
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
    quantity = "EXCLUDED.quantity" if replace else f"{_TABLE}.quantity + EXCLUDED.quantity"
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT.format(rows=placeholders, quantity=quantity), params)


def record_usage(
    institution: Any, metric: str, quantity: int = 1, *, dimension: str = "", at: dt.datetime | None = None
) -> None:
    """Add ``quantity`` to the institution's counter of ``metric`` for its local day at ``at`` (now)."""
    if quantity:
        _write({(_uuid(institution), local_day(institution, at), str(metric), dimension): quantity}, replace=False)


def set_usage(institution: Any, metric: str, quantity: int, *, dimension: str = "", day: dt.date | None = None) -> None:
    """Set the counter (a snapshot such as the bytes stored): the latest value of a day wins."""
    key = (_uuid(institution), day or local_day(institution), str(metric), dimension)
    _write({key: quantity}, replace=True)


# The buffer ------------------------------------------------------------------------------

# Institution, UTC minute, metric, dimension: the local day is found when the
# buffer is written, so counting never needs the database (the lean rendering
# path counts on the event loop). Every time zone's offset is whole minutes.
_Pending = tuple[UUID, int, str, str]
_buffer: dict[_Pending, int] = {}
_lock = threading.Lock()
# Held while a batch is taken and written, so a page that flushes waits for a
# background write under way and then sees its counts.
_writing = threading.Lock()
_wake = threading.Event()
_flusher: tuple[int, threading.Thread] | None = None


def count_later(institution_id: Any, metric: str, quantity: int = 1, *, dimension: str = "") -> None:
    """Add to the counter soon, without touching the database now (the hot paths)."""
    if not quantity:
        return
    key = (_uuid(institution_id), int(time.time()) // 60, str(metric), dimension)
    with _lock:
        _buffer[key] = _buffer.get(key, 0) + quantity
    if _flusher is None or _flusher[0] != os.getpid():
        _ensure_flusher()
    if not _wake.is_set():  # waking the writer is the costly part: once per batch
        _wake.set()


def _take() -> dict[_Pending, int]:
    with _lock:
        taken = dict(_buffer)
        _buffer.clear()
    return taken


def _put_back(rows: dict[_Pending, int]) -> None:
    with _lock:
        for key, quantity in rows.items():
            _buffer[key] = _buffer.get(key, 0) + quantity


def _write_pending(pending: dict[_Pending, int]) -> None:
    rows: dict[Key, int] = {}
    for (institution_id, minute, metric, dimension), quantity in pending.items():
        day = local_day(institution_id, dt.datetime.fromtimestamp(minute * 60, dt.UTC))
        key = (institution_id, day, metric, dimension)
        rows[key] = rows.get(key, 0) + quantity
    _write(rows, replace=False)


def flush() -> None:
    """Write what this process has counted but not yet written (pages call it before they sum)."""
    with _writing:
        rows = _take()
        try:
            _write_pending(rows)
        except DatabaseError:
            _put_back(rows)
            raise


def _flush_in_background() -> None:
    failures = 0
    while True:
        _wake.wait()
        time.sleep(FLUSH_SECONDS)  # gather a second's worth into one statement
        _wake.clear()
        failed = False
        with _writing:
            rows = _take()
            try:
                _write_pending(rows)
            except Exception:
                # A passing failure (a restarting database) is retried quietly at first.
                failures += 1
                level = logging.WARNING if failures >= 3 else logging.DEBUG
                log.log(level, "usage counters not written yet (attempt %d); retrying", failures, exc_info=True)
                _put_back(rows)
                failed = True
            else:
                failures = 0
            finally:
                # This thread's connection is not a request's: close it, so none is
                # left open between flushes.
                connection.close()
        if failed:
            _wake.set()
            time.sleep(FLUSH_SECONDS * 5)


def _ensure_flusher() -> None:
    global _flusher
    pid = os.getpid()
    if _flusher is not None and _flusher[0] == pid and _flusher[1].is_alive():
        return
    with _lock:
        if _flusher is not None and _flusher[0] == pid and _flusher[1].is_alive():
            return
        thread = threading.Thread(target=_flush_in_background, name="usage-flush", daemon=True)
        thread.start()
        _flusher = (pid, thread)


@atexit.register
def _flush_at_exit() -> None:
    if _buffer:
        try:
            flush()
        except Exception as exc:
            log.warning("usage counters of this process's last second lost at exit: %s", exc)


def pending() -> Iterable[tuple[_Pending, int]]:
    """What the buffer holds (for tests and diagnostics)."""
    with _lock:
        return list(_buffer.items())
