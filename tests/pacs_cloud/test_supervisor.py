"""``make run``'s supervisor: a process that dies is started again, with backoff, and the others run on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = f"{sys.executable} -c \"import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)\""


class Output:
    """The supervisor's output, read as it comes."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(popen,), daemon=True)
        self.reader.start()

    def _read(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count}x {pattern!r} in:\n" + "\n".join(self.lines))


def pids(output: Output, name: str, count: int) -> list[int]:
    return [int(m.group(1)) for m in output.wait_for(rf"^\S+ {name}\s+\| pid (\d+)$", count)]


def alive(pid: int, wait: float = 0.0) -> bool:
    """Whether ``pid`` still runs (a zombie not yet reaped by init counts as gone), after up to ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state != "Z" and time.monotonic() >= deadline:
            return True
        if state == "Z":
            return False
        time.sleep(0.05)


def test_a_killed_process_is_restarted_with_backoff_and_the_others_run_on(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"# the demo's processes, in small\nweb: {SLEEPER}\nworker: {SLEEPER}\n", encoding="utf-8")
    popen = subprocess.Popen(
        [sys.executable, "-m", "pacs_cloud.lib.supervisor", str(procfile), "--backoff", "0.3", "--grace", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(popen)
    try:
        [web] = pids(output, "web", 1)
        [worker] = pids(output, "worker", 1)

        os.kill(worker, signal.SIGKILL)
        output.wait_for(r"supervisor \| worker exited with status -?\d+ after [\d.]+ s; restarting in 0.3 s")
        second = pids(output, "worker", 2)[1]
        assert second != worker and alive(second)

        # A second quick death waits twice as long.
        os.kill(second, signal.SIGKILL)
        output.wait_for(r"worker exited with status -?\d+ after [\d.]+ s; restarting in 0.6 s")
        third = pids(output, "worker", 3)[2]
        assert alive(third)

        assert alive(web)
        assert len(pids(output, "web", 1)) == 1  # never restarted
    finally:
        popen.send_signal(signal.SIGINT)
        popen.wait(15)
    assert popen.returncode == 0
    assert not alive(web, wait=5) and not alive(third, wait=5)
    output.wait_for(r"supervisor \| stopping web")


def test_make_run_starts_the_procfile_under_the_supervisor():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nrun: ", 1)[1].split("\n\n", 1)[0]
    assert "-m pacs_cloud.lib.supervisor Procfile" in recipe
    assert "honcho" not in makefile
