#!/usr/bin/env python
"""Benchmark of relevant-prior selection on PostgreSQL.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_priors_bench \
        .venv/bin/python bench/priors_bench.py [--studies 200] [--rounds 200]

One patient with ``--studies`` studies over 20 years (CT, MR, CR, US, PET of
head, chest, abdomen, knee; 1–4 series each) at a hospital with three prior
rules, among 50 other patients' studies. For each round, a random study of the
patient is the one read and :func:`archive.priors.selection.select_priors`
chooses its priors (rules, candidates and series read from the database; no
cache). Prints p50/p95/max in milliseconds (wall, and this process's CPU)
and the queries per selection.

The database named by BENCH_DATABASE_URL is emptied and migrated first. The
figures and every round's time are written to ``bench/results/priors_bench.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Figures, Run  # noqa: E402

KINDS = [("CT", "HEAD"), ("CT", "CHEST"), ("MR", "HEAD"), ("CR", "CHEST"), ("US", "ABDOMEN"), ("PT", "CHEST"),
         ("MR", "KNEE"), ("CT", "ABDOMEN")]  # fmt: skip


def setup_django() -> str:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_priors_bench")
    if not url.startswith("postgres"):
        sys.exit("BENCH_DATABASE_URL must point at PostgreSQL")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("PACS_DATA_DIR", "/tmp/pacs-priors-bench")  # noqa: S108 (a scratch folder for this run)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)
    return url


def make_history(studies: int) -> list:
    from archive.models import Patient, Series, Study
    from archive.priors.models import PriorRule
    from pacs_cloud.models import Institution

    rng = random.Random(15)
    hospital = Institution.objects.create(slug="bench", name="Bench Hospital", accession_prefix="BH")
    PriorRule.objects.bulk_create(
        [
            PriorRule(institution=hospital, name="Mammo", modality="MG", position=0, years=10, max_priors=4),
            PriorRule(institution=hospital, name="Chest CT", modality="CT", body_region="CHEST", position=1),
            PriorRule(institution=hospital, name="Any", position=9, years=10, max_priors=5),
        ]
    )
    patients = [Patient(institution=hospital, patient_id=f"B{n:05d}", name="张三") for n in range(51)]
    Patient.objects.bulk_create(patients)
    rows, series = [], []
    start = date(2006, 1, 1)
    for n in range(studies + 50 * 20):
        patient = patients[0] if n < studies else patients[1 + n % 50]
        modality, part = rng.choice(KINDS)
        study = Study(
            institution=hospital,
            patient=patient,
            study_instance_uid=f"1.2.826.0.1.3680043.10.99.{n}",
            study_date=start + timedelta(days=rng.randrange(20 * 365)),
            modalities=modality,
            description=f"{modality} {part}",
            accession_number=f"BA{n}",
        )
        rows.append(study)
        for k in range(rng.randint(1, 4)):
            series.append(
                Series(
                    study=study,
                    series_instance_uid=f"{study.study_instance_uid}.{k}",
                    modality=modality,
                    body_part=part,
                )
            )
    Study.objects.bulk_create(rows, batch_size=1000)
    Series.objects.bulk_create(series, batch_size=1000)
    return rows[:studies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    url = setup_django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from archive.models import Study
    from archive.priors.selection import select_priors

    run = Run(database=url)
    history = make_history(args.studies)
    rng = random.Random(7)
    times: list[float] = []
    cpu: list[float] = []
    found: list[int] = []
    for _ in range(20):  # warm the connection and the plans
        select_priors(Study.objects.get(pk=rng.choice(history).pk))
    with CaptureQueriesContext(connection) as queries:
        select_priors(Study.objects.get(pk=history[0].pk))
    for _ in range(args.rounds):
        study = Study.objects.get(pk=rng.choice(history).pk)
        began, began_cpu = time.perf_counter(), time.process_time()
        priors = select_priors(study)
        times.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
        found.append(len(priors))
    ordered = sorted(times)
    with Figures() as figures:
        print(f"studies_of_patient={args.studies}")
        print(f"rounds={args.rounds}")
        print(f"queries_per_selection={len(queries.captured_queries) - 1}")
        print(f"p50_ms={ordered[len(ordered) // 2]:.2f}")
        print(f"p95_ms={ordered[int(len(ordered) * 0.95) - 1]:.2f}")
        print(f"max_ms={ordered[-1]:.2f}")
        print(f"cpu_p50_ms={sorted(cpu)[len(cpu) // 2]:.2f}")
        print(f"mean_priors={sum(found) / len(found):.2f}")
        print(f"load_average={' '.join(str(x) for x in os.getloadavg())}")
    path = run.write(
        "priors_bench",
        {
            "figures": figures.values,
            "runs": {"selection_ms": [round(t, 3) for t in times], "cpu_ms": [round(t, 3) for t in cpu]},
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
