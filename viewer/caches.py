"""The two caches behind rendering.

* Decoded pixels (frames and whole series volumes) live in a per-process LRU
  bounded in bytes (``VIEWER_DECODED_CACHE_MB``): numpy arrays are too large
  and too hot to ship through Redis, and a web worker that keeps serving the
  same reader keeps its volume.
* Rendered images (JPEG/PNG/WebP bytes) live in the Django cache named by
  ``VIEWER_RENDER_CACHE`` (Redis in production), so every web worker serves a
  frame another worker has already rendered.

Keys always include the instance's SHA-256, so a changed object can never be
served from a stale entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from django.conf import settings
from django.core.cache import caches


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


class ByteBoundedLRU:
    """A thread-safe LRU whose entries' ``nbytes`` sum stays under ``max_bytes``.

    ``get_or_load`` runs the loader once per key even when many threads ask
    for the same series at the same moment (the others wait for it).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Any, Sized] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[Any, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key: Any, value: Sized) -> None:
        size = value.nbytes
        if size > self.max_bytes:
            return  # larger than the whole budget: served once, never kept
        evicted_values = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                evicted_key, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                if evicted_key != key:
                    evicted_values.append(evicted)
        # An entry that holds more than its bytes (a 3D render session) lets go of it when evicted.
        for evicted in evicted_values:
            hook = getattr(evicted, "evicted", None)
            if hook is not None:
                hook()

    def discard(self, key: Any) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes

    def get_or_load(self, key: Any, loader: Callable[[], T]) -> T:
        value = self.get(key)
        if value is not None:
            return value  # type: ignore[return-value]
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            value = self.get(key)
            if value is None:
                self.misses += 1
                value = loader()
                self.put(key, value)
        with self._lock:
            self._loading.pop(key, None)
        return value  # type: ignore[return-value]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0


_decoded: ByteBoundedLRU | None = None
_decoded_lock = threading.Lock()


def decoded_cache() -> ByteBoundedLRU:
    """This process's cache of decoded frames and series volumes."""
    global _decoded
    if _decoded is None:
        with _decoded_lock:
            if _decoded is None:
                _decoded = ByteBoundedLRU(settings.VIEWER_DECODED_CACHE_MB * 1024 * 1024)
    return _decoded


def render_cache() -> Any:
    return caches[settings.VIEWER_RENDER_CACHE]


def clear_all() -> None:
    """Empty both caches (tests and the benchmark's cold runs)."""
    decoded_cache().clear()
    render_cache().clear()
    from .access import _recorded, forget_resolved

    _recorded.clear()
    forget_resolved()
