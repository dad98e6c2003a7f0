"""The embedded Celery broker: throughput of the two transports that need no server.

* ``filesystem``: kombu's filesystem transport with atomic message files
  (``pacs_cloud.lib.fsbroker``), the embedded default;
* ``sqlalchemy``: kombu's SQLAlchemy transport on an SQLite file.

Two producer processes publish task-sized messages while one consumer takes
and acknowledges them; the figure is messages per second end to end, and
every message is checked to arrive exactly once. Run:

    python bench/broker_bench.py [--messages 2000]

Writes ``bench/results/broker_bench.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kombu import Connection  # noqa: E402
from results import Figures, Run  # noqa: E402

PRODUCERS = 2
# About the size of one of our task messages (ids, a few headers).
BODY = {"args": ["0b6f6a5e-4a0e-4c0e-9a53-6c1b1f6a4f2e"], "kwargs": {}, "pad": "x" * 600}


def connection(kind: str, folder: Path) -> Connection:
    if kind == "filesystem":
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
        }
        return Connection("filesystem://", transport="pacs_cloud.lib.fsbroker:Transport", transport_options=options)
    return Connection(f"sqla+sqlite:///{folder / 'broker.sqlite3'}")


def produce(kind: str, folder: str, producer: int, count: int) -> None:
    with connection(kind, Path(folder)) as conn:
        queue = conn.SimpleQueue("bench")
        for n in range(count):
            queue.put({**BODY, "producer": producer, "n": n})
        queue.close()


def measure(kind: str, messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir()
        with connection(kind, folder) as conn:
            conn.SimpleQueue("bench").close()  # declare before the producers start
        each = messages // PRODUCERS
        context = multiprocessing.get_context("spawn")
        producers = [context.Process(target=produce, args=(kind, tmp, p, each)) for p in range(PRODUCERS)]
        started = time.perf_counter()
        for process in producers:
            process.start()
        seen = set()
        with connection(kind, folder) as conn:
            queue = conn.SimpleQueue("bench")
            while len(seen) < each * PRODUCERS:
                try:
                    message = queue.get(timeout=60)
                except Empty:
                    break
                key = (message.payload["producer"], message.payload["n"])
                assert key not in seen, f"{kind}: {key} delivered twice"
                seen.add(key)
                message.ack()
            queue.close()
        elapsed = time.perf_counter() - started
        for process in producers:
            process.join()
        assert len(seen) == each * PRODUCERS, f"{kind}: {each * PRODUCERS - len(seen)} messages lost"
        return {"messages": len(seen), "seconds": round(elapsed, 3), "per_second": round(len(seen) / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = Run()
    runs: dict[str, list[dict[str, float]]] = {"filesystem": [], "sqlalchemy": []}
    with Figures() as figures:
        for _ in range(args.rounds):
            for kind in runs:
                runs[kind].append(measure(kind, args.messages))
        for kind, results in runs.items():
            rates = sorted(r["per_second"] for r in results)
            print(f"{kind}.messages_per_second_median={rates[len(rates) // 2]}")
        fs = sorted(r["per_second"] for r in runs["filesystem"])[args.rounds // 2]
        sqla = sorted(r["per_second"] for r in runs["sqlalchemy"])[args.rounds // 2]
        print(f"filesystem_over_sqlalchemy={round(fs / sqla, 2)}")
    run.write("broker_bench", {"figures": figures.values, "runs": runs})


if __name__ == "__main__":
    main()
