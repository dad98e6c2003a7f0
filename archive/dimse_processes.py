"""Several DICOM service processes behind one port (``dicom_server`` with DICOM_SERVICE_PROCESSES > 1).

One Python process serves its associations as threads that share one
interpreter lock, so a CT and an MR sending at once would share one core.
Here the parent binds the port, forks the service processes and accepts
every connection itself; it hands each accepted socket (``SCM_RIGHTS`` over
a Unix socket pair per process, :func:`hand_over`) to the process serving
fewest associations at that moment, the least recently chosen among equals.
The second modality therefore goes to the idle process, whatever the order
or timing of the connections: neither SO_REUSEPORT (which spreads by a hash
of the addresses, so two senders on one host share a process half the time)
nor processes racing in ``accept`` on a shared socket decide it.

The parent knows how many connections it handed to each process; each
process counts the associations it has finished in a row of an anonymous
shared mapping, which also holds its connections per peer address (for
DICOM_MAX_ASSOCIATIONS_PER_PEER across the processes). Each process writes
only its own row; a connection is admitted under a POSIX record lock (which
the kernel releases if its holder is killed), and the parent clears the row
of a process it restarts. The parent restarts a process that dies (after a
pause that grows to 30 s) and stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import mmap
import os
import select
import signal
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db import connections

log = logging.getLogger(__name__)

_INT = struct.calcsize("i")
# Peer addresses are counted in this many slots (by a hash of the address);
# two addresses sharing a slot share its limit, which errs on the strict side.
PEER_SLOTS = 1024


class SharedCounts:
    """Counters in memory shared by the forked service processes: one row per process.

    A row holds the associations the process has finished (a running total),
    then its connections per peer slot. Each process writes only its own row;
    admitting a connection (read every row, then add to one's own) is done
    under :meth:`exclusive`.
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

    def finished(self, process: int) -> int:
        return self.cells[process * self.row]


class ProcessLoad:
    """A service process's side of the load the parent balances: it counts the associations it has finished."""

    def __init__(self, counts: SharedCounts, process: int) -> None:
        self.counts = counts
        self.process = process
        self._lock = threading.Lock()

    def done(self) -> None:
        """A connection handed to this process ended (served, refused or lost before it began)."""
        with self._lock:
            self.counts.cells[self.process * self.counts.row] += 1


class Dispatcher:
    """The parent's choice of a service process for each accepted connection.

    A process's load is the connections handed to it less the associations it
    has finished (:class:`ProcessLoad`); the least loaded is chosen, and the
    least recently chosen among equals, so concurrent associations spread
    over the processes one each before any process gets a second.
    """

    def __init__(self, counts: SharedCounts) -> None:
        self.counts = counts
        self.handed = [0] * counts.processes
        self.chosen_at = [0] * counts.processes
        self._turn = 0

    def reset(self, process: int) -> None:
        """A process (re)starts with nothing handed to it."""
        self.handed[process] = 0
        self.counts.clear(process)

    def load(self, process: int) -> int:
        return self.handed[process] - self.counts.finished(process)

    def order(self, alive: Iterable[int]) -> list[int]:
        """The live processes, best choice first."""
        return sorted(alive, key=lambda process: (self.load(process), self.chosen_at[process], process))

    def handed_to(self, process: int) -> None:
        self._turn += 1
        self.handed[process] += 1
        self.chosen_at[process] = self._turn


def hand_over(channel: socket.socket, connection: socket.socket) -> None:
    """Pass an accepted connection to the service process at the other end of ``channel``."""
    socket.send_fds(channel, [b"c"], [connection.fileno()])


def take_over(channel: socket.socket) -> socket.socket:
    """The connection the parent passed with :func:`hand_over` (raises ``OSError`` when there is none)."""
    message, fds, _, _ = socket.recv_fds(channel, 16, 1)
    if not fds:
        raise ConnectionError("the parent closed the hand-over channel" if not message else "no connection passed")
    return socket.socket(fileno=fds[0])


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
    """The listening socket of the parent (non-blocking: it accepts whatever is waiting, then looks after its
    processes)."""
    listening = socket.create_server((host, port), backlog=128)
    listening.setblocking(False)
    return listening


def serve_in_processes(
    processes: int,
    listening: socket.socket,
    serve: Callable[[int, SharedCounts, socket.socket, threading.Event], None],
    *,
    stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Fork ``processes`` service processes running ``serve(index, counts, channel, stop)`` until a stop signal,
    and hand each connection accepted on ``listening`` to one of them.

    ``serve`` takes its connections from ``channel`` (:func:`take_over`) and
    returns once ``stop`` is set. The parent opens no database connection
    and starts no thread before forking.
    """
    counts = SharedCounts(processes)
    dispatcher = Dispatcher(counts)
    stopping = threading.Event()
    children: dict[int, int] = {}  # pid -> process index
    channels: dict[int, socket.socket] = {}  # process index -> the parent's end of its channel
    failures = [0] * processes
    started = [0.0] * processes
    restart_at: dict[int, float] = {}  # process index -> when to start it again
    parent = os.getpid()

    def start(index: int) -> None:
        dispatcher.reset(index)
        started[index] = time.monotonic()
        # A sequenced-packet pair: one message, one connection, never merged.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid:
            theirs.close()
            ours.setblocking(False)  # a process that stops reading must not stop the parent
            channels[index] = ours
            children[pid] = index
            return
        code = 0
        try:
            # Only the parent accepts and hands over.
            listening.close()
            ours.close()
            for channel in channels.values():
                channel.close()
            stop = threading.Event()
            for number in stop_signals:
                signal.signal(number, lambda *_: stop.set())
            watcher = threading.Thread(target=_stop_when_orphaned, args=(parent, stop), daemon=True)
            watcher.start()
            serve(index, counts, theirs, stop)
        except BaseException:
            log.exception("DICOM service process %d failed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def ended(pid: int, status: int) -> None:
        index = children.pop(pid)
        channel = channels.pop(index, None)
        if channel is not None:
            channel.close()  # connections it had not taken yet end with it
        if stopping.is_set():
            return
        # A process that served a while before it died starts again at once.
        failures[index] = 1 if time.monotonic() - started[index] > 60 else failures[index] + 1
        pause = min(30.0, 0.5 * 2 ** (failures[index] - 1)) if failures[index] > 1 else 0.0
        log.error(
            "DICOM service process %d (pid %d) ended (status %d); restarting it in %.1f s", index, pid, status, pause
        )
        restart_at[index] = time.monotonic() + pause

    def dispatch(connection: socket.socket) -> None:
        for index in dispatcher.order(channels):
            try:
                hand_over(channels[index], connection)
            except OSError:  # it died (or stopped reading): the next one
                continue
            dispatcher.handed_to(index)
            return
        log.warning("no DICOM service process could take a connection; closed it")

    connections.close_all()  # each process opens its own
    gc.freeze()  # what is loaded so far stays shared with the processes (copy on write)
    previous = {number: signal.signal(number, lambda *_: stopping.set()) for number in stop_signals}
    try:
        for index in range(processes):
            start(index)
        while not stopping.is_set():
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                ended(pid, status)
            for index, when in list(restart_at.items()):
                if time.monotonic() >= when and not stopping.is_set():
                    del restart_at[index]
                    start(index)
            if not channels:  # connections wait in the backlog until a process is back
                stopping.wait(0.05)
                continue
            try:
                ready = select.select([listening], [], [], 0.2)[0]
            except InterruptedError:
                continue
            while ready and not stopping.is_set():
                try:
                    connection, _ = listening.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    log.warning("accepting a DICOM connection failed", exc_info=True)
                    break
                with connection:
                    set_nodelay(connection)
                    dispatch(connection)  # the process has its own descriptor now
    finally:
        listening.close()  # no more connections
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
        for channel in channels.values():
            channel.close()
        for number, handler in previous.items():
            signal.signal(number, handler)


def set_nodelay(sock: socket.socket) -> None:
    # (as archive.dimse.set_nodelay; that module is not imported by the parent's loop)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
    """Share ``server``'s peer limits with the other service processes, and tell the parent its load."""
    server.peers = SharedPeerConnections(counts, process, limit)
    server.load = ProcessLoad(counts, process)
