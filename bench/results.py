"""The benchmarks' committed figures: ``bench/results/<name>.json``, which the README's table quotes.

Each document says where and when it was measured, beside what:

* ``machine``: CPU count and model, kernel, memory, and the load average
  when the run began and ended (the machine is shared: a figure taken under
  load says so);
* ``versions``: Python, Django, pydicom, pynetdicom, the PostgreSQL server
  and Orthanc, and the commit measured;
* whatever the script measured, every run of it, not only medians.

Use from a bench script (run as ``python bench/<script>.py``, so this folder
is on ``sys.path``)::

    from results import Run

    run = Run(database=url)          # the load average is taken now
    with Figures() as figures:       # every ``key=value`` line printed meanwhile
        ...                          # measure
    run.write("workflow_bench", {"figures": figures.values, "runs": {...}})

Documents other scripts write with their own writer (``archive_ingest.json``,
``archive_qido.json``, ``mwl_query.json``, ``render_bench.json``,
``report_bench.json``) live beside these, as indented UTF-8 JSON with a
final newline; :func:`write_results` writes the same way and adds only keys
the payload lacks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PACKAGES = ("django", "pydicom", "pynetdicom", "psycopg2-binary", "uvicorn")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """CPU count and model, kernel and memory of this machine (load averages are added per run)."""
    info = _proc("/proc/cpuinfo")
    memory = _proc("/proc/meminfo")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": info.get("model name", platform.processor()),
        "kernel": platform.release(),
        "system": platform.platform(),
        "memory": memory.get("MemTotal", ""),
    }


def _proc(path: str) -> dict[str, str]:
    """The first value of each ``key: value`` line of a /proc file; empty where there is none."""
    found: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            found.setdefault(key.strip(), value.strip())
    return found


def versions(database: str | None = None) -> dict[str, str]:
    """Versions measured: Python, the Python packages, PostgreSQL (when ``database`` is given), Orthanc, commit.

    A piece that cannot be asked (no Orthanc installed, the database down)
    is an empty string, so a run is never lost to its own description.
    """
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = ""
    found["postgresql"] = _postgres_version(database) if database else ""
    found["orthanc"] = _first_line(["Orthanc", "--version"])
    found["commit"] = _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    return found


def _postgres_version(database: str) -> str:
    try:
        import psycopg2

        with psycopg2.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return str(cursor.fetchone()[0])
    except Exception:  # noqa: BLE001 (any failure: leave the version blank, keep the figures)
        return ""


def _first_line(command: list[str]) -> str:
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = answer.stdout.strip().splitlines()
    return lines[0].strip() if answer.returncode == 0 and lines else ""


def write_results(name: str, payload: dict[str, Any], *, directory: Path = RESULTS_DIR) -> Path:
    """Write ``payload`` as ``<directory>/<name>.json`` (``bench/results/`` by default); the path written.

    ``machine``, ``versions`` and ``date_utc`` are filled in where the payload
    has none; a payload's own ``machine`` gains the current load average as
    ``load_average_end`` if it has no end load of its own.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a results name: {name!r}")
    document = dict(payload)
    document.setdefault("benchmark", name)
    document.setdefault("date_utc", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    document["machine"] = {**machine(), **document.get("machine", {})}
    document["machine"].setdefault("load_average_end", load_average())
    document.setdefault("versions", versions(os.environ.get("DATABASE_URL")))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.json"
    target.write_text(json.dumps(document, indent=1, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results_file={target}", file=sys.stderr)
    return target


class Run:
    """One benchmark run: its start time and load average, then the document at its end.

    Versions are asked at the end, when the run's database (often created
    by the run) exists.
    """

    def __init__(self, *, database: str | None = None) -> None:
        self.started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.load_average_start = load_average()
        self.database = database

    def write(self, name: str, payload: dict[str, Any], *, directory: Path = RESULTS_DIR) -> Path:
        document = {
            "date_utc": self.started_at,
            "machine": {
                **machine(),
                "load_average_start": self.load_average_start,
                "load_average_end": load_average(),
            },
            "versions": versions(self.database),
            **payload,
        }
        return write_results(name, document, directory=directory)


_FIGURE = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$")


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Figures:
    """Collect the ``key=value`` lines a script prints (its report) while still printing them.

    The scripts print their figures as they go; this keeps those lines the
    one record, so the committed document says exactly what the console said.
    Numbers are stored as numbers.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._stdout: TextIO | None = None
        self._partial = ""

    def __enter__(self) -> Figures:
        self._stdout = sys.stdout
        sys.stdout = self  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        if self._partial:
            self._take(self._partial)
            self._partial = ""
        sys.stdout = self._stdout  # type: ignore[assignment]

    def write(self, text: str) -> int:
        assert self._stdout is not None
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._take(line)
        return self._stdout.write(text)

    def flush(self) -> None:
        if self._stdout is not None:
            self._stdout.flush()

    def _take(self, line: str) -> None:
        match = _FIGURE.match(line.strip())
        if match:
            self.values[match.group(1)] = _value(match.group(2).strip())

    def __getattr__(self, name: str) -> Any:
        # Anything else a stream offers (fileno, isatty, encoding) is the real stdout's.
        return getattr(self._stdout, name)
