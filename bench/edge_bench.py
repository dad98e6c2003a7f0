#!/usr/bin/env python3
"""Edge gateway benchmark: the edge beside Orthanc, on this machine, in the same run.

Measures (``key=value`` lines; a JSON summary goes to ``$BENCH_HOME/results/``, and
the figures with every run, machine, load and versions to
``bench/results/edge_bench.json``, ``--results``):

* C-STORE ingest at the edge: dcmtk ``storescu`` sends a 300-slice 512x512 CT
  series over one association (TCP_NODELAY on every end) to Orthanc and to
  the edge (``manage.py edge_gateway``), alternately, several runs;
  instances/s and the ratio edge/Orthanc per run (median reported). The
  edge answers "stored" once each object is fsynced on its disk and its
  outbox row committed, as in production.
* End to end: from the first byte at the edge to the whole series indexed in
  the cloud (QIDO-RS reports every instance), the forwarder running as in
  production, against Orthanc's local ingest time of the same series; ratio.
* Edge memory: its resident set size (VmRSS, sampled every 0.2 s) during a
  sustained ingest of 3,000 such instances (10 series) while it forwards them.

The cloud (ASGI web server and DICOM service) runs on a PostgreSQL database
of its own (dropped and re-created), seeded with the demo; the edge is the
demo's Riverside edge with its token. Reuses ``bench/archive_bench.py`` for
the synthetic series and the two servers.

    BENCH_HOME=/tmp/bench-edge .venv/bin/python bench/edge_bench.py \\
        --database postgres://postgres@127.0.0.1:5432/pacs_edge_bench

Nothing here runs in the test suite; generated series stay under BENCH_HOME.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from archive_bench import (  # noqa: E402
    PYTHON,
    ROOT,
    Orthanc,
    Ours,
    cpu_seconds,
    free_port,
    make_series,
    out,
    recreate_database,
    storescu,
    wait_port,
)
from results import RESULTS_DIR, Figures, Run  # noqa: E402


class Edge:
    """``manage.py edge_gateway`` (PACS_ROLE=edge) forwarding to ``cloud``, in a data folder of its own."""

    def __init__(self, home: Path, cloud: Ours) -> None:
        self.dir = home / "edge"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dicom_port = free_port()
        token = (cloud.home / "demo-edge-token").read_text().strip()
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "STORAGE_URL", "CELERY_BROKER_URL")
        }
        env.update(
            PACS_ROLE="edge",
            PACS_DATA_DIR=str(self.dir),
            CLOUD_URL=cloud.url,
            EDGE_TOKEN=token,
            TCP_NODELAY="1",
            LOG_LEVEL="WARNING",
            EDGE_HEARTBEAT_SECONDS="5",
        )
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "manage.py"), "edge_gateway", "--port", str(self.dicom_port),
             "--status-port", str(free_port())],
            env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        wait_port(self.dicom_port, self.process)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def indexed(cloud: Ours, study: str) -> int:
    try:
        return cloud.stored(study)
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return 0


def wait_indexed(cloud: Ours, study: str, count: int, timeout: float = 600) -> float:
    """Poll QIDO-RS until the study holds ``count`` instances; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if indexed(cloud, study) >= count:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"study {study} never reached {count} instances in the cloud")


def bench_ingest(orthanc: Orthanc, edge: Edge, cloud: Ours, home: Path, runs: int, slices: int) -> dict:
    out("ingest.method", f"dcmtk storescu, one association, {slices}-slice 512x512 CT (Explicit VR LE), fresh UIDs "
        f"per run, Orthanc and the edge alternately, {runs} runs; wall time of storescu; end to end = storescu "
        "start to the series fully indexed in the cloud (QIDO-RS polled every 50 ms); TCP_NODELAY=1 everywhere")  # fmt: skip
    rows = []
    for run in range(runs):
        series = make_series(home / "series" / f"run{run}", slices, seed=2000 + run)
        row: dict = {"instances": slices, "bytes": series["bytes"]}
        order = ["orthanc", "edge"] if run % 2 == 0 else ["edge", "orthanc"]
        for name in order:
            if name == "orthanc":
                cpu = cpu_seconds(orthanc.process.pid)
                row["orthanc_s"] = storescu(orthanc.dicom_port, "ORTHANC", series["folder"])
                row["orthanc_cpu_s"] = cpu_seconds(orthanc.process.pid) - cpu
                row["orthanc_ips"] = slices / row["orthanc_s"]
            else:
                cpu = cpu_seconds(edge.process.pid)
                started = time.monotonic()
                row["edge_s"] = storescu(edge.dicom_port, "PACSEDGE", series["folder"])
                row["edge_ips"] = slices / row["edge_s"]
                row["edge_e2e_s"] = wait_indexed(cloud, series["study"], slices) - started
                row["edge_cpu_s"] = cpu_seconds(edge.process.pid) - cpu
            time.sleep(0.5)
        row["ingest_ratio"] = row["edge_ips"] / row["orthanc_ips"]
        row["e2e_ratio"] = row["edge_e2e_s"] / row["orthanc_s"]
        for key, value in row.items():
            out(f"ingest.run{run + 1}.{key}", value)
        rows.append(row)
        shutil.rmtree(series["folder"], ignore_errors=True)
    summary = {
        key: statistics.median(r[key] for r in rows)
        for key in ("orthanc_ips", "edge_ips", "ingest_ratio", "orthanc_s", "edge_e2e_s", "e2e_ratio")
    }
    summary["edge_cpu_ms_per_instance"] = statistics.median(r["edge_cpu_s"] for r in rows) / slices * 1000
    summary["orthanc_cpu_ms_per_instance"] = statistics.median(r["orthanc_cpu_s"] for r in rows) / slices * 1000
    for key, value in summary.items():
        out(f"ingest.median.{key}", value)
    summary["runs"] = rows
    return summary


def bench_memory(edge: Edge, cloud: Ours, home: Path, total: int, slices: int) -> dict:
    out("memory.method", f"{total} 512x512 CT instances ({total // slices} series of {slices}) sent by storescu, one "
        "association per series back to back, while the edge forwards them; VmRSS of the edge sampled every 0.2 s "
        "from the start until the cloud indexed the last series")  # fmt: skip
    batches = []
    for number in range(total // slices):
        batches.append(make_series(home / "sustained" / f"s{number}", slices, seed=5000 + number))
    samples: list[float] = [edge.rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(edge.rss_mb())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        for batch in batches:
            storescu(edge.dicom_port, "PACSEDGE", batch["folder"])
        sent = time.monotonic() - started
        for batch in batches:
            wait_indexed(cloud, batch["study"], slices, timeout=1800)
        forwarded = time.monotonic() - started
    finally:
        done.set()
        sampler.join()
    for batch in batches:
        shutil.rmtree(batch["folder"], ignore_errors=True)
    summary = {
        "instances": total,
        "rss_start_mb": samples[0],
        "rss_max_mb": max(samples),
        "rss_end_mb": samples[-1],
        "ingest_s": sent,
        "ingest_ips": total / sent,
        "all_in_cloud_s": forwarded,
    }
    for key, value in summary.items():
        out(f"memory.{key}", value)
    summary["rss_samples_mb"] = samples
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=os.environ.get("BENCH_DATABASE_URL",
                        "postgres://postgres@127.0.0.1:5432/pacs_edge_bench"))  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--sustained", type=int, default=3000)
    parser.add_argument("--only", default="", help="comma-separated subset of ingest,memory")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "edge_bench.json")
    args = parser.parse_args()
    run = Run(database=args.database)
    with Figures() as figures:
        summary = measure(args)
    settings = {key: value for key, value in vars(args).items() if key not in ("results", "database")}
    run.write(
        args.results.stem,
        {"benchmark": "edge gateway beside Orthanc", "settings": settings, "figures": figures.values, **summary},
        directory=args.results.parent,
    )


def measure(args: argparse.Namespace) -> dict:
    wanted = set(args.only.split(",")) if args.only else {"ingest", "memory"}
    home = Path(os.environ.get("BENCH_HOME", ROOT / "bench" / "data")).resolve()
    (home / "results").mkdir(parents=True, exist_ok=True)
    out("date_utc", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out("host.cpus", os.cpu_count())
    out("host.loadavg_start", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    version = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout.splitlines()
    out("orthanc.version", version[0] if version else "?")
    recreate_database(args.database)
    orthanc = Orthanc(home, free_port(), free_port())
    cloud = edge = None
    summary: dict = {}
    try:
        cloud = Ours(home, args.database, free_port(), free_port())
        edge = Edge(home, cloud)
        if "ingest" in wanted:
            summary["ingest"] = bench_ingest(orthanc, edge, cloud, home, args.runs, args.slices)
        if "memory" in wanted:
            summary["memory"] = bench_memory(edge, cloud, home, args.sustained, args.slices)
    finally:
        out("host.loadavg_end", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        for server in (edge, cloud):
            if server is not None:
                server.stop()
        orthanc.stop()
    target = home / "results" / f"edge-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    target.write_text(json.dumps(summary, indent=1, default=str))
    out("results_file", target)
    return summary


if __name__ == "__main__":
    main()
