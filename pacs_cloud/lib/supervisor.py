"""Run every process of a Procfile and restart the one that dies.

``python -m pacs_cloud.lib.supervisor Procfile`` is what ``make run`` starts:
each ``name: command`` line runs under ``/bin/sh -c`` in a process group of its
own, its output prefixed with its name. A process that exits is started again
after a delay that doubles from ``--backoff`` up to ``--max-backoff`` (back to
the start once it has stayed up for ``--stable`` seconds), and each exit and
restart is logged; the others run on untouched. Ctrl-C or SIGTERM stops every
process: SIGTERM to each group, SIGKILL to what is left after ``--grace``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Process:
    name: str
    command: str
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = 0.0
    restarts: int = 0
    reader: threading.Thread | None = field(default=None, repr=False)


def read_procfile(path: Path) -> list[Process]:
    processes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"{path}: not a 'name: command' line: {line!r}")
        processes.append(Process(name.strip(), command.strip()))
    return processes


class Supervisor:
    def __init__(
        self,
        processes: list[Process],
        *,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable: float = 60.0,
        grace: float = 10.0,
        out: IO[str] = sys.stdout,
    ) -> None:
        self.processes = processes
        self.backoff, self.max_backoff, self.stable, self.grace = backoff, max_backoff, stable, grace
        self.out = out
        self.width = max(len(p.name) for p in processes) if processes else 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def say(self, name: str, text: str) -> None:
        with self.lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | {text}\n")
            self.out.flush()

    def start(self, process: Process) -> None:
        popen = subprocess.Popen(
            ["/bin/sh", "-c", process.command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole, spared our Ctrl-C
        )
        process.popen, process.started_at, process.restart_at = popen, time.monotonic(), None
        process.reader = threading.Thread(target=self._relay, args=(process.name, popen), daemon=True)
        process.reader.start()
        self.say("supervisor", f"{process.name} started (pid {popen.pid})")

    def _relay(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))

    def step(self) -> None:
        """Notice exits and start what is due; called about ten times a second."""
        now = time.monotonic()
        for process in self.processes:
            popen = process.popen
            if popen is not None and popen.poll() is not None:
                if process.reader is not None:
                    process.reader.join(1)
                uptime = now - process.started_at
                if uptime >= self.stable or process.delay == 0:
                    process.delay = self.backoff
                else:
                    process.delay = min(process.delay * 2, self.max_backoff)
                process.popen, process.restart_at = None, now + process.delay
                self.say(
                    "supervisor",
                    f"{process.name} exited with status {popen.returncode} after {uptime:.1f} s;"
                    f" restarting in {process.delay:g} s",
                )
            elif popen is None and process.restart_at is not None and now >= process.restart_at:
                process.restarts += 1
                self.start(process)

    def run(self) -> int:
        for process in self.processes:
            self.start(process)
        while not self.stopping.wait(0.1):
            self.step()
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        running = [p for p in self.processes if p.popen is not None and p.popen.poll() is None]
        for process in running:
            self.say("supervisor", f"stopping {process.name}")
            self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in running:
            assert process.popen is not None
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("supervisor", f"{process.name} did not stop in {self.grace:g} s; killing it")
                self._signal(process, signal.SIGKILL)
                process.popen.wait()

    @staticmethod
    def _signal(process: Process, signum: int) -> None:
        assert process.popen is not None
        try:
            os.killpg(process.popen.pid, signum)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Procfile's processes, restarting any that exits.")
    parser.add_argument("procfile", type=Path, nargs="?", default=Path("Procfile"))
    parser.add_argument("--backoff", type=float, default=1.0, help="first restart delay, seconds")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest restart delay, seconds")
    parser.add_argument("--stable", type=float, default=60.0, help="uptime after which the delay starts again")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL on stop")
    args = parser.parse_args(argv)
    supervisor = Supervisor(
        read_procfile(args.procfile),
        backoff=args.backoff,
        max_backoff=args.max_backoff,
        stable=args.stable,
        grace=args.grace,
    )

    def stop(signum: int, frame: object) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
