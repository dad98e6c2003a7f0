"""The malformed-object attack, thousands of cases, against a running product.

The corpus of ``tests/attack/corpus.py`` (every pydicom sample it knows, every
mutation, ``--variants`` seeded variants of each) is sent

* over STOW-RS, one object per request and then in mixed requests of
  ``--mixed`` parts (good and bad together: no part may fail for another's sake);
* over C-STORE to the cloud's DICOM service and to an edge's;

and everything the cloud stored is read back as a viewer would (metadata,
frame 1, rendered, thumbnail, the default transcoding retrieval). The checks
are the suite's (``tests/attack/malformed.py``): no 5xx, no 0xC211, every
valid object stored, every malformed one refused with a reason, every read
clean. Counts and problems go to ``bench/results/attack.json``.

Against ``make run`` (the demo: Riverside's technologist, modality
``RIVERSIDE_CT`` allowed to call the cloud and Riverside's edge)::

    .venv/bin/python bench/attack.py [--url http://127.0.0.1:8000] [--variants 12] \\
        [--cloud-port 11112] [--edge-port 11113] [--no-edge]

Each run uses fresh UIDs (``--seed``, default: the time), so it can be
repeated against the same archive.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Run  # noqa: E402

from tests.attack.corpus import BENCH_SAMPLES, Case, cases  # noqa: E402
from tests.attack.malformed import Outcome, c_store, problems, read_back, stow  # noqa: E402


def token(url: str, username: str, password: str) -> str:
    answer = requests.post(f"{url}/api/v1/auth/token/", data={"username": username, "password": password}, timeout=30)
    answer.raise_for_status()
    return answer.json()["token"]


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counted = Counter(
        "stored" if o.stored else "broken" if o.error else "not sendable" if o.status == -1 else "refused"
        for o in outcomes
    )
    return {"cases": len(outcomes), **dict(sorted(counted.items()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="tech@riverside")
    parser.add_argument("--password", default="demo-password")
    parser.add_argument("--calling-ae", default="RIVERSIDE_CT")
    parser.add_argument("--cloud-port", type=int, default=11112)
    parser.add_argument("--edge-port", type=int, default=11113)
    parser.add_argument("--no-edge", action="store_true")
    parser.add_argument("--variants", type=int, default=12)
    parser.add_argument("--mixed", type=int, default=8, help="parts per mixed STOW-RS request")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()

    run = Run()
    started = time.monotonic()
    corpus: list[Case] = list(cases(BENCH_SAMPLES, variants=args.variants, seed=args.seed))
    mixed_corpus: list[Case] = list(cases(BENCH_SAMPLES, variants=max(1, args.variants // 4), seed=args.seed + 1))
    print(f"cases={len(corpus)} mixed_cases={len(mixed_corpus)} seed={args.seed}", flush=True)
    headers = {"Authorization": f"Bearer {token(args.url, args.user, args.password)}"}
    http = requests.Session()
    timings: dict[str, float] = {}

    clock = time.monotonic()
    single: list[Outcome] = []
    for case in corpus:
        single += stow(args.url, headers, [case], http)
    timings["stow_single_s"] = time.monotonic() - clock

    clock = time.monotonic()
    mixed: list[Outcome] = []
    for start in range(0, len(mixed_corpus), args.mixed):
        mixed += stow(args.url, headers, mixed_corpus[start : start + args.mixed], http)
    timings["stow_mixed_s"] = time.monotonic() - clock

    clock = time.monotonic()
    for outcome in single + mixed:
        if outcome.stored and not outcome.error:
            read_back(args.url, headers, outcome, http)
    timings["read_back_s"] = time.monotonic() - clock

    clock = time.monotonic()
    to_cloud = c_store(args.cloud_port, "PACSCLOUD", args.calling_ae, corpus)
    timings["c_store_cloud_s"] = time.monotonic() - clock
    to_edge: list[Outcome] = []
    if not args.no_edge:
        clock = time.monotonic()
        to_edge = c_store(args.edge_port, "PACSEDGE", args.calling_ae, corpus)
        timings["c_store_edge_s"] = time.monotonic() - clock

    everything = single + mixed + to_cloud + to_edge
    found = problems(everything)
    figures = {
        "stow_single": summary(single),
        "stow_mixed": summary(mixed),
        "read_back": sum(1 for o in single + mixed if o.stored),
        "c_store_cloud": summary(to_cloud),
        "c_store_edge": summary(to_edge),
        "problems": len(found),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.monotonic() - started, 1),
    }
    for key, value in figures.items():
        print(f"{key}={value}", flush=True)
    for line in found[:50]:
        print("problem:", line)
    run.write(
        "attack",
        {
            "what": "the malformed DICOM corpus over STOW-RS, C-STORE to the cloud and to the edge, and read back",
            "seed": args.seed,
            "variants": args.variants,
            "samples": list(BENCH_SAMPLES),
            "figures": figures,
            "problem_list": found[:200],
        },
    )
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
