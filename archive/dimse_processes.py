"""Several DICOM service processes on one listening socket (``dicom_server`` with DICOM_SERVICE_PROCESSES > 1).

One Python process serves its associations as threads that share one
interpreter lock, so a CT and an MR sending at once would share one core.
Here the parent binds the port once and forks the service processes, which
all accept on that socket (a pre-forked accept: unlike SO_REUSEPORT, which
spreads connections by a hash of their addresses, two associations from one
sender are not left to chance). A process takes a new connection only when
no other serves fewer associations, unless the others leave it waiting
(:meth:`ProcessLoad.may_accept`): the second modality goes to the idle core.

The counts the processes share (associations per process, connections per
peer address for DICOM_MAX_ASSOCIATIONS_PER_PEER) live in an anonymous
shared mapping; each process writes only its own row, a connection is
admitted under a POSIX record lock (which the kernel releases if its holder
is killed), and the parent clears the row of a process it restarts. The
parent restarts a process that dies (after a pause that grows to 30 s) and
stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import mmap
import os
import signal
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connections

log = logging.getLogger(__name__)

_INT = struct.calcsize("i")
# Peer addresses are counted in this many slots (by a hash of the address);
# two addresses sharing a slot share its limit, which errs on the strict side.
PEER_SLOTS = 1024


class SharedCounts:
    """Counters in memory shared by the forked service processes: one row per process.

    A row holds the process's associations in progress, then its connections per peer slot.
    Each process writes only its own row; admitting a connection (read every
    row, then add to one's own) is done under :meth:`exclusive`.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.row = 1 + PEER_SLOTS
        self._memory = mmap.mmap(-1, processes * self.row * _INT)  # MAP_SHARED | MAP_ANONYMOUS
        self.cells = memoryview(self._memory).cast("i")
        # A POSIX record lock excludes the other processes (not this one's
        # threads) and is released by the kernel if its holder is killed.
        self._lock_file = tempfile.TemporaryFile()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No other service process changes the counts inside the block."""
        fcntl.lockf(self._lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_file.fileno(), fcntl.LOCK_UN)

    def clear(self, process: int) -> None:
        start = process * self.row
        self.cells[start : start + self.row] = memoryview(bytes(self.row * _INT)).cast("i")

    def associations(self, process: int) -> int:
        return self.cells[process * self.row]


class ProcessLoad:
    """This process's associations in progress, next to the other service processes'."""

    def __init__(self, counts: SharedCounts, process: int) -> None:
        self.counts = counts
        self.process = process
        self._lock = threading.Lock()

    def may_accept(self) -> bool:
        mine = self.counts.associations(self.process)
        return all(mine <= self.counts.associations(other) for other in range(self.counts.processes))

    def add(self, change: int) -> None:
        with self._lock:
            self.counts.cells[self.process * self.counts.row] += change


class SharedPeerConnections:
    """:class:`archive.dimse.PeerConnections` counted across the service processes."""

    def __init__(self, counts: SharedCounts, process: int, limit: int) -> None:
        self.counts = counts
        self.process = process
        self.limit = limit
        self._lock = threading.Lock()

    def _slot(self, address: str) -> int:
        return 1 + zlib.crc32(address.encode()) % PEER_SLOTS

    def admit(self, address: str) -> bool:
        slot, row, cells = self._slot(address), self.counts.row, self.counts.cells
        with self._lock, self.counts.exclusive():
            held = sum(cells[process * row + slot] for process in range(self.counts.processes))
            if held >= self.limit:
                return False
            cells[self.process * row + slot] += 1
            return True

    def leave(self, address: str) -> None:
        index = self.process * self.counts.row + self._slot(address)
        with self._lock:
            if self.counts.cells[index] > 0:
                self.counts.cells[index] -= 1


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the service processes share (non-blocking: a process that loses the race for a
    connection goes back to waiting instead of blocking in accept)."""
    listening = socket.create_server((host, port), backlog=128)
    listening.setblocking(False)
    return listening


def serve_in_processes(
    processes: int,
    listening: socket.socket,
    serve: Callable[[int, SharedCounts, threading.Event], None],
    *,
    stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Fork ``processes`` service processes running ``serve(index, counts, stop)`` until a stop signal.

    ``serve`` returns once ``stop`` is set. The parent opens no database
    connection and starts no thread before forking.
    """
    counts = SharedCounts(processes)
    stopping = threading.Event()
    children: dict[int, int] = {}  # pid -> process index
    failures = [0] * processes
    started = [0.0] * processes
    parent = os.getpid()

    def start(index: int) -> None:
        counts.clear(index)
        started[index] = time.monotonic()
        pid = os.fork()
        if pid:
            children[pid] = index
            return
        code = 0
        try:
            stop = threading.Event()
            for number in stop_signals:
                signal.signal(number, lambda *_: stop.set())
            watcher = threading.Thread(target=_stop_when_orphaned, args=(parent, stop), daemon=True)
            watcher.start()
            serve(index, counts, stop)
        except BaseException:
            log.exception("DICOM service process %d failed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    connections.close_all()  # each process opens its own
    gc.freeze()  # what is loaded so far stays shared with the processes (copy on write)
    previous = {number: signal.signal(number, lambda *_: stopping.set()) for number in stop_signals}
    try:
        for index in range(processes):
            start(index)
        while not stopping.is_set():
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                stopping.wait(0.2)
                continue
            index = children.pop(pid)
            if stopping.is_set():
                break
            # A process that served a while before it died starts again at once.
            failures[index] = 1 if time.monotonic() - started[index] > 60 else failures[index] + 1
            pause = min(30.0, 0.5 * 2 ** (failures[index] - 1)) if failures[index] > 1 else 0.0
            log.error(
                "DICOM service process %d (pid %d) ended (status %d); restarting it in %.1f s",
                index,
                pid,
                status,
                pause,
            )
            if stopping.wait(pause):
                break
            start(index)
    finally:
        for pid in children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in children:
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        listening.close()
        for number, handler in previous.items():
            signal.signal(number, handler)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    """A service process whose parent died (killed without passing the signal on) stops too."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


def install(server: Any, counts: SharedCounts, process: int, limit: int) -> None:
    """Share ``server``'s peer limits and load with the other service processes."""
    server.peers = SharedPeerConnections(counts, process, limit)
    server.load = ProcessLoad(counts, process)
