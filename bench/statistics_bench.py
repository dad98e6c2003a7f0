#!/usr/bin/env python
"""Benchmark of the statistics page with 100,000 studies over a year, on PostgreSQL.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_stats_bench \
        .venv/bin/python bench/statistics_bench.py [--studies 100000] [--rounds 15]

Bulk-creates, in one scratch database (emptied and migrated first): 20
hospitals in Asia/Shanghai (one of them takes half the studies), a reading
centre with two pools of 15 radiologists, and over the past 365 days
``--studies`` studies, each with its order (procedure, station, priority),
its reading process and task (95 % signed, a third of them by a pool reader,
5 % breached and escalated) and its report. Then ``manage.py
rebuild_statistics`` fills the summary rows (timed), and the statistics page
(every chart drawn, through the whole Django stack in-process, audited) is
requested ``--rounds`` times per view:

* ``hospital_30d``: the big hospital's administrator, the default 30 days;
* ``hospital_year``: the same over 365 days (about 50,000 studies);
* ``hospital_year_ct``: the same with a modality filter;
* ``pool_year``: a pool's owner over 365 days;
* ``platform_year``: the platform administrator, every institution, 365 days;
* ``api_turnaround_year``: ``GET /api/v1/statistics/turnaround-by-reader/`` over 365 days.

Ranges of more than ``STATISTICS_ROLLUP_DAYS`` (31) days without a modality
or priority filter are summed from the daily rollups (approximate
percentiles); ``--reuse`` migrates and rebuilds the rollups (timed) first.

Figures: p50 and p95 milliseconds per view, printed as ``key=value`` lines
and written with every sample, the machine and its load to
``bench/results/statistics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import RESULTS_DIR, Figures, Run  # noqa: E402

MODALITIES = [
    ("CT", "CHEST", 0.35),
    ("MR", "HEAD", 0.15),
    ("DX", "CHEST", 0.3),
    ("US", "ABDOMEN", 0.15),
    ("MG", "BREAST", 0.05),
]
PRIORITIES = [("routine", 0.8), ("urgent", 0.15), ("stat", 0.05)]
SLA = {"routine": 1440, "urgent": 240, "stat": 60}


def setup_django() -> str:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_stats_bench")
    if not url.startswith("postgres"):
        sys.exit("BENCH_DATABASE_URL must point at PostgreSQL")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("PACS_DATA_DIR", "/tmp/pacs-statistics-bench")  # noqa: S108 (a scratch folder)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
    import django

    django.setup()
    from pacs_cloud import push

    # Membership changes push to open sockets; here there are none, and no web
    # server to relay to.
    push.IN_WEB_PROCESS = True
    return url


def reset_database() -> None:
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)


def pick(rng: random.Random, weighted: list) -> tuple:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


def make_world(studies: int, rng: random.Random) -> dict:
    from django.contrib.auth.hashers import make_password

    from archive.models import DicomNode, Patient, Study
    from pacs_cloud.models import Institution, Membership, Role, User
    from workflow.models import PoolMember, ProcessInstance, RadiologistPool, ReadingTask, TaskOffer
    from worklist.models import Order, Procedure, Station

    unusable = make_password(None)
    hospitals = [
        Institution.objects.create(
            slug=f"h{i}",
            name=f"第{i + 1}人民医院",
            accession_prefix=f"H{i}",
            patient_id_issuer=f"H{i}",
            time_zone="Asia/Shanghai",
        )
        for i in range(20)
    ]
    centre = Institution.objects.create(
        slug="centre",
        name="区域影像诊断中心",
        kind="reading_centre",
        accession_prefix="RC",
        patient_id_issuer="RC",
        time_zone="Asia/Shanghai",
    )
    pools = [RadiologistPool.objects.create(owner=centre, name=f"夜班组{p + 1}") for p in range(2)]
    readers: dict = {}
    for p, pool in enumerate(pools):
        for r in range(15):
            user = User.objects.create(username=f"pool{p}-{r}", password=unusable, display_name=f"医生{p}{r:02d}")
            Membership.objects.create(user=user, institution=centre, role=Role.RADIOLOGIST)
            PoolMember.objects.create(pool=pool, user=user)
            readers.setdefault(pool.pk, []).append(user)
    own: dict = {}
    procedures: dict = {}
    stations: dict = {}
    for i, h in enumerate(hospitals):
        own[h.pk] = []
        for r in range(5):
            user = User.objects.create(username=f"rad{r}@h{i}", password=unusable, display_name=f"放射科医生{i}-{r}")
            Membership.objects.create(user=user, institution=h, role=Role.RADIOLOGIST)
            own[h.pk].append(user)
        for modality, part, _ in MODALITIES:
            procedures[(h.pk, modality)] = Procedure.objects.create(
                institution=h,
                code=f"{modality}{part}"[:16],
                name=f"{modality} {part}",
                modality=modality,
                body_part=part,
            )
            node = DicomNode.objects.create(institution=h, ae_title=f"H{i}_{modality}", host="127.0.0.1")
            stations[(h.pk, modality)] = Station.objects.create(
                institution=h, node=node, name=f"{modality}-{i + 1}号机", modality=modality
            )
    admin = User.objects.create(username="admin@h0", password=unusable, display_name="管理员")
    Membership.objects.create(user=admin, institution=hospitals[0], role=Role.INSTITUTION_ADMIN)
    owner = User.objects.create(username="admin@centre", password=unusable, display_name="中心管理员")
    Membership.objects.create(user=owner, institution=centre, role=Role.INSTITUTION_ADMIN)
    platform = User.objects.create(username="platform", password=unusable, is_platform_admin=True)

    now = datetime.now(UTC)
    weights = [10.0] + [10.0 / 19] * 19  # the first hospital takes half
    batch = 5000
    made = 0
    while made < studies:
        n = min(batch, studies - made)
        patients, rows, orders, processes, tasks, offers = [], [], [], [], [], []
        for k in range(n):
            h = rng.choices(hospitals, weights=weights)[0]
            modality, part, _ = pick(rng, MODALITIES)
            priority = pick(rng, PRIORITIES)[0]
            registered = now - timedelta(days=rng.uniform(0, 365))
            images = registered + timedelta(minutes=rng.uniform(5, 90))
            completed = images + timedelta(minutes=rng.uniform(2, 20))
            patient = Patient(institution=h, patient_id=f"P{made + k:07d}", name=f"张^{made + k}")
            uid = f"1.2.826.0.1.3680043.10.77.{made + k}"
            study = Study(
                institution=h,
                patient=patient,
                study_instance_uid=uid,
                modalities=modality,
                state="reported",
                received_at=images,
                last_instance_at=images,
                completed_at=completed,
                num_series=1,
                num_instances=100,
            )
            order = Order(
                institution=h,
                patient=patient,
                procedure=procedures[(h.pk, modality)],
                station=stations[(h.pk, modality)],
                accession_number=f"A{made + k:08d}",
                requested_procedure_id=f"R{made + k}",
                sps_id=f"S{made + k}",
                study_instance_uid=uid,
                priority=priority,
                scheduled_at=registered,
                scheduled_date=registered.date(),
                scheduled_time=registered.time(),
                modality=modality,
                state="completed",
                study=study,
                created_at=registered,
            )
            process = ProcessInstance(institution=h, study=study, state="completed", created_at=completed)
            signed = rng.random() < 0.95
            by_pool = rng.random() < 1 / 3
            pool = rng.choice(pools) if by_pool else None
            reader = rng.choice(readers[pool.pk]) if pool else rng.choice(own[h.pk])
            claimed = completed + timedelta(minutes=rng.expovariate(1 / (SLA[priority] / 4)))
            finished = claimed + timedelta(minutes=rng.uniform(5, 40))
            breached = rng.random() < 0.05
            task = ReadingTask(
                process=process,
                study=study,
                institution=h,
                state="final" if signed else "claimed",
                priority=priority,
                modality=modality,
                body_part=part,
                sla_minutes=SLA[priority],
                offered_at=completed,
                due_at=completed + timedelta(minutes=SLA[priority]),
                escalation_level=1 if breached else 0,
                breached_at=completed + timedelta(minutes=SLA[priority]) if breached else None,
                claimed_by=reader,
                claimed_at=claimed,
                finished_at=finished if signed else None,
                created_at=completed,
            )
            patients.append(patient)
            rows.append(study)
            orders.append(order)
            processes.append(process)
            tasks.append(task)
            if pool:
                offers.append(TaskOffer(task=task, hospital=h, kind="pool", pool=pool, is_active=False))
        Patient.objects.bulk_create(patients)
        Study.objects.bulk_create(rows)
        Order.objects.bulk_create(orders)
        ProcessInstance.objects.bulk_create(processes)
        ReadingTask.objects.bulk_create(tasks)
        TaskOffer.objects.bulk_create(offers)
        made += n
        print(f"made={made}", file=sys.stderr)
    return {"admin": admin, "owner": owner, "platform": platform, "hospital": hospitals[0], "pool": pools[0]}


def measure(client, path: str, params: dict, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds + 1):
        started = time.perf_counter()
        response = client.get(path, params)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    return times[1:]  # the first request warms the caches


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--results", default="statistics")
    parser.add_argument(
        "--reuse", action="store_true", help="Measure the pages on the data a previous run left (no reset, no rebuild)."
    )
    args = parser.parse_args()
    url = setup_django()
    run = Run(database=url)
    from django.core.management import call_command
    from django.test import Client

    from pacs_cloud.models import Institution, User
    from workflow.models import RadiologistPool, StudyStat
    from workflow.statistics import rollups

    if args.reuse:
        previous = json.loads((RESULTS_DIR / f"{args.results}.json").read_text())["figures"]
        made_s, rebuild_s = previous["bulk_create_s"], previous["rebuild_s"]
        call_command("migrate", verbosity=0)  # the data may predate a table (the daily rollups)
        world = {
            "admin": User.objects.get(username="admin@h0"),
            "owner": User.objects.get(username="admin@centre"),
            "platform": User.objects.get(username="platform"),
            "hospital": Institution.objects.get(slug="h0"),
            "pool": RadiologistPool.objects.order_by("name").first(),
        }
    else:
        reset_database()
        rng = random.Random(20261208)
        started = time.perf_counter()
        world = make_world(args.studies, rng)
        made_s = time.perf_counter() - started
        started = time.perf_counter()
        call_command("rebuild_statistics", verbosity=0)
        rebuild_s = time.perf_counter() - started
    # The daily rollups alone, from the per-study rows (rebuild_statistics ends with this).
    started = time.perf_counter()
    rollup_rows = rollups.rebuild()
    rollup_s = time.perf_counter() - started
    from django.db import connection

    with connection.cursor() as cursor:
        # As autovacuum leaves the table after a rebuild: without the deleted rows' versions.
        cursor.execute("VACUUM ANALYZE workflow_statrollup")
        cursor.execute("ANALYZE")
    samples: dict[str, list[float]] = {}
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    year = {"from": (today - timedelta(days=364)).isoformat(), "to": today.isoformat()}
    clients = {}
    for who in ("admin", "owner", "platform"):
        clients[who] = Client()
        clients[who].force_login(world[who], backend="django.contrib.auth.backends.ModelBackend")
    views = {
        "hospital_30d": ("admin", "/statistics/", {}),
        "hospital_year": ("admin", "/statistics/", year),
        "hospital_year_ct": ("admin", "/statistics/", {**year, "modality": "CT"}),
        "pool_year": ("owner", "/statistics/", {**year, "pool": str(world["pool"].pk)}),
        "platform_year": ("platform", "/statistics/", year),
        "api_turnaround_year": ("admin", "/api/v1/statistics/turnaround-by-reader/", year),
    }
    with Figures() as figures:
        print(f"studies={StudyStat.objects.count()}")
        print(f"bulk_create_s={made_s:.1f}")
        print(f"rebuild_s={rebuild_s:.1f}")
        print(f"rebuild_studies_per_s={args.studies / rebuild_s:.0f}")
        print(f"rollup_rebuild_s={rollup_s:.1f}")
        print(f"rollup_rows={rollup_rows}")
        print(f"studies_in_hospital_year={StudyStat.objects.filter(institution=world['hospital']).count()}")
        for name, (who, path, params) in views.items():
            samples[name] = measure(clients[who], path, params, args.rounds)
            print(f"{name}_p50_ms={pct(samples[name], 50):.0f}")
            print(f"{name}_p95_ms={pct(samples[name], 95):.0f}")
    run.write(
        args.results,
        {
            "target": "statistics page with 100,000 studies over a year: < 300 ms server time",
            "parameters": {"studies": args.studies, "rounds": args.rounds, "reused_data": args.reuse},
            "figures": figures.values,
            "runs_ms": {k: [round(v, 1) for v in vs] for k, vs in samples.items()},
        },
    )


if __name__ == "__main__":
    main()
