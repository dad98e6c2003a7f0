#!/usr/bin/env python3
"""Where the DICOM service's time goes while modalities send: ``py-spy`` over every service process.

Starts our web server and DICOM service on a scratch PostgreSQL database
(as ``bench/archive_bench.py`` does), then for each association count asked
for sends that many 300-slice 512x512 CT series at once with dcmtk
``storescu`` while ``py-spy record --subprocesses`` samples the service (its
parent and service processes, idle threads included). Writes a raw profile
per count (``--format raw``: collapsed stacks, one line per stack) and
prints the share of samples per service process and per place in the code.
Not part of the test suite; needs ``py-spy`` in the virtualenv.

    .venv/bin/python bench/ingest_profile.py --database postgres://postgres@127.0.0.1:5432/pacs_bench \\
        --associations 1,2 --out var/bench/profile
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from archive_bench import Ours, free_port, make_series, recreate_database, start_storescu  # noqa: E402

PY_SPY = Path(sys.executable).with_name("py-spy")

# Where a busy sample is, by the innermost frame that names one of these (first match wins).
PLACES = [
    ("index statement and commit (PostgreSQL round trip)", ("_insert_and_count", "GroupCommit")),
    ("file write + fsync, folder fsync", ("put_chunks", "_fsync_dir", "commit (archive/storage")),
    ("announcing stored instances", ("announce_deferred",)),
    ("parsing and DICOM JSON", ("_read_bare", "json_metadata", "_check_consistency", "read_dataset", "_sha256")),
    ("reading PDUs", ("_read_pdu_data", "receive_into")),
    ("pynetdicom: DUL and DIMSE state machines, answering", ("dul.py", "dimse.py", "association.py", "fsm.py")),
]
# A waiting thread (innermost frame in IDLE or WAITS) waits for what the innermost of these in its stack names.
WAITS = {
    "_wait_for_io": "waiting for the sender's next PDU (DUL select)",
    "_wait_for_message": "association thread waiting for a DIMSE message",
    "_wait_until_stored": "waiting for the file's write + fsync (writer thread)",
    "GroupCommit.run": "waiting for another association's group commit",
}
IDLE = {"wait", "select", "sleep", "_worker", "serve_forever", "_stop_when_orphaned", "get", "acquire", "join"}
IDLE.add("serve_in_processes")  # the parent's own frame is its select() (accepting and handing over are C calls)


def summarise(raw: Path) -> dict:
    """Shares of the samples: per process (busy samples only), per place among busy samples, and the waits."""
    busy_by_process: collections.Counter = collections.Counter()
    busy: collections.Counter = collections.Counter()
    waits: collections.Counter = collections.Counter()
    total = busy_total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        # py-spy names each process of the chain ("process 123:\"cmd\""), the service's parent first.
        chain = [frame.split(":", 1)[0] for frame in frames if frame.startswith("process ")]
        process = " > ".join(chain[1:]) or "parent"
        leaf = frames[-1].split(" (", 1)[0].rsplit(".", 1)[-1]  # "Condition.wait (threading.py:331)": wait
        if leaf in WAITS or leaf in IDLE or leaf.startswith("thread ("):
            names = [frame.split(" (", 1)[0] for frame in reversed(frames)]
            waited = next((WAITS[name] for name in names if name in WAITS), None)
            waits[waited or "idle threads (pools, servers, the parent's select)"] += samples
            continue
        busy_total += samples
        busy_by_process[process] += samples
        place = "other"
        for frame in reversed(frames):
            found = next((name for name, marks in PLACES if any(mark in frame for mark in marks)), None)
            if found:
                place = found
                break
        busy[place] += samples
    return {
        "samples": total,
        "busy_samples": busy_total,
        "busy by process": {p: round(100 * n / busy_total, 1) for p, n in busy_by_process.most_common()},
        "busy by place": {p: round(100 * n / busy_total, 1) for p, n in busy.most_common()},
        "waits (share of all samples)": {p: round(100 * n / total, 1) for p, n in waits.most_common()},
    }


def print_summary(summary: dict) -> None:
    for key, shares in summary.items():
        if isinstance(shares, dict):
            for name, share in shares.items():
                print(f"  {key}: {share:5.1f} %  {name}")
        else:
            print(f"  {key}: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True)
    parser.add_argument("--associations", default="1,2")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", default="var/bench/profile")
    parser.add_argument("--summarise", nargs="*", default=[], help="only summarise these raw profiles")
    args = parser.parse_args()
    if args.summarise:
        for raw in args.summarise:
            print(raw)
            print_summary(summarise(Path(raw)))
        return
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    recreate_database(args.database)
    ours = Ours(home, args.database, free_port(), free_port())
    try:
        time.sleep(2)
        for count in (int(c) for c in args.associations.split(",")):
            series = [make_series(home / "series" / f"{count}-{k}", args.slices, seed=7000 + 10 * count + k)
                      for k in range(count)]  # fmt: skip
            raw = out / f"service-{count}.txt"
            spy = subprocess.Popen(
                [str(PY_SPY), "record", "--subprocesses", "--idle", "--threads", "--format", "raw",
                 "--rate", str(args.rate), "--output", str(raw), "--pid", str(ours.dicom.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.5)
            load = os.getloadavg()
            started = time.perf_counter()
            senders = [start_storescu(ours.dicom_port, "PACSCLOUD", s["folder"]) for s in series]
            for sender in senders:
                _, error = sender.communicate()
                if sender.returncode:
                    raise RuntimeError(error[-500:])
            seconds = time.perf_counter() - started
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait(timeout=60)
            print(f"associations={count} instances/s={count * args.slices / seconds:.1f} load={load[0]:.2f}")
            summary = summarise(raw)
            print_summary(summary)
    finally:
        ours.stop()


if __name__ == "__main__":
    main()
