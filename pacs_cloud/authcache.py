"""A short per-process memo of bearer-token and membership lookups.

Every DICOMweb frame request authenticates its token and checks the caller's
institutions; fetching both from the database costs more than rendering a
cached frame. They change rarely, so each web process keeps them for
``AUTH_CACHE_SECONDS``. A change made in this process (a save, a delete, a
revocation) clears the memo at once; other processes see it within that time.
Expiry is still checked on every request against the current time.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction

T = TypeVar("T")

_lock = threading.Lock()
_entries: dict[tuple, tuple[float, Any]] = {}


def remembered(key: tuple, load: Callable[[], T]) -> T:
    """``load()``'s value for ``key``, reused for AUTH_CACHE_SECONDS."""
    ttl = settings.AUTH_CACHE_SECONDS
    if ttl <= 0:
        return load()
    now = time.monotonic()
    entry = _entries.get(key)
    if entry is not None and now - entry[0] < ttl:
        return entry[1]
    value = load()
    with _lock:
        if len(_entries) > 10_000:
            _entries.clear()
        _entries[key] = (now, value)
    return value


def private_copy(obj: T) -> T:
    """A shallow copy, so per-request attributes set on it never leak into the memo."""
    state = getattr(obj, "_state", None)
    if state is None:
        return copy.copy(obj)
    # A model instance: copy its attributes and row state, as pickling would,
    # without pickling's cost (this runs on every authenticated request).
    clone = obj.__class__.__new__(obj.__class__)
    clone.__dict__.update(obj.__dict__)
    clone._state = copy.copy(state)  # type: ignore[attr-defined]
    clone._state.fields_cache = dict(state.fields_cache)  # type: ignore[attr-defined]
    return clone


def forget(*args: Any, **kwargs: Any) -> None:
    """Drop everything now and again when the current transaction commits.

    The second time matters: until the commit, another request may still
    read, and remember, the old rows. Usable as a signal receiver.
    """
    _clear()
    transaction.on_commit(_clear)


def _clear() -> None:
    with _lock:
        _entries.clear()
