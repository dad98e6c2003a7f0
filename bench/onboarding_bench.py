"""Onboarding wall time: the browser test from the platform administrator's first click to the first study.

Runs ``tests/workflow/test_onboarding_browser.py`` ``--runs`` times (real
Chromium, a real edge process, dcmtk's storescu) and keeps the wall time each
run prints, from the first click to the study on the new technologist's page.
Target (issue 19): under 10 minutes. Writes ``bench/results/onboarding.json``.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_bench python bench/onboarding_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from results import Run

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/workflow/test_onboarding_browser.py"
WALL = re.compile(r"onboarding wall time: ([\d.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    database = os.environ.get("DATABASE_URL") or os.environ.get("BENCH_DATABASE_URL", "")
    env = {**os.environ, "TCP_NODELAY": "1", **({"DATABASE_URL": database} if database else {})}
    run = Run(database=database or None)
    times: list[float] = []
    for number in range(args.runs):
        command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--reuse-db", TEST]
        answer = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        found = WALL.search(answer.stdout)
        if answer.returncode != 0 or not found:
            sys.exit(f"run {number + 1} failed:\n{answer.stdout[-3000:]}\n{answer.stderr[-3000:]}")
        times.append(float(found.group(1)))
        print(f"run_{number + 1}_seconds={times[-1]}")
    figures = {"median_seconds": statistics.median(times), "max_seconds": max(times), "target_seconds": 600}
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    run.write("onboarding", {"figures": figures, "runs": {"wall_seconds": times}, "test": TEST})


if __name__ == "__main__":
    main()
