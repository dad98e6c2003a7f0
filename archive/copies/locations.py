"""Backends of the storage locations, and reads that fail over between them.

Every location holds an object under the same key, so a read needs no index
lookup: it tries the healthy locations from the fastest (lowest
``read_rank``) on, and a location that fails a read is passed over for
``STORAGE_FAILOVER_SECONDS`` (tried last, not never), so one dead store
costs one failed attempt, not one per read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlparse

from django.conf import settings

from ..models import StorageLocation
from ..storage import CHUNK, FileSystemStorage, S3Storage, Storage, get_storage

log = logging.getLogger(__name__)

T = TypeVar("T")

# The list of locations is re-read this often; a location added or marked
# unhealthy elsewhere reaches every process within this time.
_LIST_SECONDS = 10.0


@dataclass(frozen=True)
class Place:
    """A location as reads and copies need it (no database access afterwards)."""

    id: Any
    name: str
    site: str
    tier: str
    healthy: bool
    is_default: bool
    storage: Storage
    replica_of: Any = None  # the location the store itself replicates here (the copier writes nothing)


_backends: dict[tuple, Storage] = {}
_lock = threading.Lock()
_listed: tuple[float, list[Place]] = (0.0, [])
_failed_at: dict[Any, float] = {}


def backend(location: StorageLocation) -> Storage:
    """The storage of ``location``; the default location is always ``STORAGE_URL``'s store."""
    if location.is_default:
        return get_storage()
    if location.kind == StorageLocation.Kind.FILESYSTEM:
        signature: tuple = ("fs", location.path)
    else:
        signature = ("s3", location.endpoint_url, location.bucket, location.prefix, location.storage_class)
    with _lock:
        found = _backends.get(signature)
        if found is None:
            if signature[0] == "fs":
                found = FileSystemStorage(Path(location.path))
            else:
                found = S3Storage(
                    location.bucket,
                    location.prefix,
                    endpoint_url=location.endpoint_url,
                    storage_class=location.storage_class,
                )
            _backends[signature] = found
    return found


def places(*, fresh: bool = False) -> list[Place]:
    """Every location, fastest first, with its backend."""
    global _listed
    listed_at, listed = _listed
    if (fresh or time.monotonic() - listed_at > _LIST_SECONDS or not listed) and not _in_event_loop():
        rows = list(StorageLocation.objects.order_by("read_rank", "name"))
        listed = [
            Place(r.pk, r.name, r.site, r.tier, r.healthy, r.is_default, backend(r), r.replica_of_id) for r in rows
        ]
        _listed = (time.monotonic(), listed)
    return listed


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop (no database access there: the last list is used)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def forget() -> None:
    """Re-read the locations on the next use (after a location changed)."""
    global _listed
    _listed = (0.0, [])
    _failed_at.clear()
    _default_id.clear()


_default_id: list[Any] = []


def default_location_id() -> Any:
    """The default location's id, read once per process (it changes only with a migration or an action)."""
    if not _default_id:
        _default_id.append(ensure_default_location().pk)
    return _default_id[0]


def ensure_default_location() -> StorageLocation:
    """The default location, described from ``STORAGE_URL`` if there is none yet (a migration makes it)."""
    found = StorageLocation.objects.filter(is_default=True).first()
    if found is not None:
        return found
    parsed = urlparse(settings.STORAGE_URL)
    if parsed.scheme == "s3":
        fields = {
            "kind": StorageLocation.Kind.S3,
            "bucket": parsed.netloc,
            "prefix": parsed.path.strip("/"),
            "endpoint_url": settings.S3_ENDPOINT_URL,
        }
    else:
        fields = {"kind": StorageLocation.Kind.FILESYSTEM, "path": parsed.path}
    location, _ = StorageLocation.objects.get_or_create(
        is_default=True, defaults={"name": "primary", "site": "primary", "read_rank": 10, **fields}
    )
    return location


def place(location_id: Any) -> Place:
    for candidate in places():
        if candidate.id == location_id:
            return candidate
    for candidate in places(fresh=True):
        if candidate.id == location_id:
            return candidate
    raise LookupError(f"no storage location {location_id}")


DEFAULT = "default"  # the default location's mark in _failed_at: known without the database


def _failing(mark: Any, now: float) -> bool:
    return now - _failed_at.get(mark, -1e9) < settings.STORAGE_FAILOVER_SECONDS


def _mark(p: Place) -> Any:
    return DEFAULT if p.is_default else p.id


def reading_order() -> list[Place]:
    """Locations a read may use (not the archive tier: it needs a restore), healthy and not failing first."""
    now = time.monotonic()
    readable = [p for p in places() if p.tier != StorageLocation.Tier.ARCHIVE]

    def passed_over(p: Place) -> bool:
        return not p.healthy or _failing(_mark(p), now)

    return [p for p in readable if not passed_over(p)] + [p for p in readable if passed_over(p)]


def _default_first() -> bool:
    """Whether a read starts at the default location without consulting the list (the usual case)."""
    listed = _listed[1]
    default_unhealthy = any(p.is_default and not p.healthy for p in listed)
    return not default_unhealthy and not _failing(DEFAULT, time.monotonic())


def _read(key: str, operation: Callable[[Storage], T]) -> T:
    errors = []
    tried_default = False
    if _default_first():
        # No database access while the default location answers.
        try:
            return operation(get_storage())
        except Exception as exc:  # a missing object or a store that does not answer: another copy
            tried_default = True
            errors.append(f"default: {exc}")
            _note_failure(DEFAULT, key, "the default location", exc)
    for candidate in reading_order():
        if candidate.is_default and tried_default:
            continue
        try:
            result = operation(candidate.storage)
        except Exception as exc:  # as above
            errors.append(f"{candidate.name}: {exc}")
            _note_failure(_mark(candidate), key, candidate.name, exc)
            continue
        _failed_at.pop(_mark(candidate), None)
        return result
    raise FileNotFoundError(f"no readable copy of {key}: " + "; ".join(errors))


def _note_failure(mark: Any, key: str, name: str, exc: Exception) -> None:
    if isinstance(exc, FileNotFoundError) or _is_missing(exc):
        return  # this location lacks the object; it still answers
    _failed_at[mark] = time.monotonic()
    log.warning("reading %s from %s failed, trying another copy: %s", key, name, exc)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class ReadThrough:
    """Reads of archived objects from whichever location answers (the storage interface's read half)."""

    def open(self, key: str) -> BinaryIO:
        return _read(key, lambda storage: storage.open(key))

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return _read(key, lambda storage: storage.read_range(key, offset, length))

    def exists(self, key: str) -> bool:
        return any(p.storage.exists(key) for p in reading_order())

    def local_path(self, key: str) -> Path | None:
        for candidate in reading_order():
            if candidate.healthy:
                found = candidate.storage.local_path(key)
                if found is not None:
                    return found
        return None


_reader = ReadThrough()


def reader() -> ReadThrough:
    return _reader


def sha256_of(storage: Storage, key: str) -> tuple[str, int]:
    """Re-read a stored object: its SHA-256 and size."""
    digest = hashlib.sha256()
    size = 0
    with storage.open(key) as handle:
        for block in _blocks(handle):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def fixity_of(place: Place, storage: Storage, key: str) -> tuple[str, int]:
    """A copy's SHA-256 and size: re-read, or in the archive tier (no read before a restore) as the store
    recorded them when it accepted the upload (after checking its Content-MD5); a restore re-reads it."""
    recorded = getattr(storage, "stored_fixity", None)
    if place.tier == StorageLocation.Tier.ARCHIVE and recorded is not None:
        return cast(tuple[str, int], recorded(key))
    return sha256_of(storage, key)


def _blocks(handle: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: handle.read(CHUNK), b"")


def probe(place: Place) -> str:
    """Write, read back and delete a small object; '' when the location answers, else the error."""
    key = f"health/{uuid.uuid4().hex}.probe"
    body = b"cloud-pacs location probe"
    storage: Any = place.storage
    target = getattr(storage, "store", storage)  # the object store behind a local cache
    try:
        target.put_chunks(key, [body], hashlib.sha256(body).hexdigest())
        try:
            if target.read_range(key, 0, len(body)) != body:
                return "the location answered other bytes than were written"
        finally:
            target.delete(key)
    except Exception as exc:  # any failure is the location's health
        return str(exc)[:300] or type(exc).__name__
    return ""
