#!/usr/bin/env python
"""Benchmark of the reading workflow engine on PostgreSQL.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_workflow_bench \
        .venv/bin/python bench/workflow_bench.py [--studies 10000] [--open-tasks 100000] [--readers 50]

Three measurements, printed as ``key=value`` lines:

1. routing: completed studies routed through a 6-rule policy by the engine
   (``do_start_reading_process``: facts, rule match, process, tasks, offers,
   transitions, audit, study marked routed, SLA timer and pushes after commit),
   in ``--workers`` processes as Celery would; tasks created per second.
2. claims: ``--readers`` radiologists of one pool, each in its own thread with
   its own database connection, read their worklist, claim the first task
   (trying the next when someone else was faster), "read" it for a random
   ``--read-seconds`` (5–15 s by default; far faster than a real read) and
   finalise it. Latency of every claim attempt (won or lost);
   afterwards every task's transition log is checked for two owners. Then
   ``--bursts`` rounds where all readers claim the same task at once.
3. worklist: ``--open-tasks`` open tasks over 20 hospitals and 5 pools; p95 of
   the REST worklist (``GET /api/v1/reading-tasks/`` with count and first page,
   through the full Django/DRF stack in-process) for a pool member and for a
   hospital radiologist, with several sorts and filters.

The database named by BENCH_DATABASE_URL is emptied and migrated first.
The figures, with every claim's and request's time, machine, load and
versions, are written to ``bench/results/workflow_bench.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import RESULTS_DIR, Figures, Run  # noqa: E402

# Every sample behind the printed percentiles, for the results file (milliseconds).
RUNS: dict[str, object] = {}


def setup_django() -> None:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_workflow_bench")
    if not url.startswith("postgres"):
        sys.exit("BENCH_DATABASE_URL must point at PostgreSQL")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("PACS_DATA_DIR", "/tmp/pacs-workflow-bench")  # noqa: S108 (a scratch folder for this run)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
    import django

    django.setup()
    from pacs_cloud import push

    # Pushes go to the channel layer as in the web process (with Redis in
    # production); the in-memory layer has no sockets here, so they cost only
    # the group_send.
    push.IN_WEB_PROCESS = True


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def reset_database() -> None:
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)


# Fixtures ----------------------------------------------------------------------


def make_world(hospitals: int = 20, pools: int = 5, readers: int = 50):
    from pacs_cloud.models import Institution, Membership, Role, User
    from workflow.models import PoolMember, RadiologistPool, ReadingAgreement

    centre = Institution.objects.create(
        slug="bench-centre",
        name="Bench Reading Centre",
        kind="reading_centre",
        accession_prefix="BRC",
        patient_id_issuer="BRC",
        time_zone="Asia/Shanghai",
    )
    insts = [
        Institution.objects.create(
            slug=f"bench-h{i}",
            name=f"Bench Hospital {i:02d}",
            accession_prefix=f"H{i}",
            patient_id_issuer=f"H{i}",
            time_zone="Asia/Shanghai",
        )
        for i in range(hospitals)
    ]
    pool_rows = [RadiologistPool.objects.create(owner=centre, name=f"Pool {p}", claim_cap=3) for p in range(pools)]
    for inst in insts:
        for pool in pool_rows:
            ReadingAgreement.objects.create(
                hospital=inst, pool=pool, valid_from=date(2020, 1, 1), sla_minutes={"stat": 30}
            )
    from django.contrib.auth.hashers import make_password

    unusable = make_password(None)  # the bench signs in with tokens only
    users = User.objects.bulk_create(
        [User(username=f"bench-reader{i}@centre", password=unusable) for i in range(readers)]
        + [User(username=f"bench-rad@h{i}", password=unusable) for i in range(hospitals)]
    )
    Membership.objects.bulk_create(
        [Membership(user=u, institution=centre, role=Role.RADIOLOGIST) for u in users[:readers]]
        + [Membership(user=u, institution=insts[i], role=Role.RADIOLOGIST) for i, u in enumerate(users[readers:])]
    )
    for u in users[:readers]:
        member = PoolMember.objects.create(pool=pool_rows[0], user=u, subspecialties=["neuro", "body"])
        member.credentialed_for.set(insts)
    return centre, insts, pool_rows, users[:readers], users[readers:]


def make_studies(insts, count: int):
    from archive.models import Patient, Series, Study

    modalities = [
        ("CT", "HEAD"),
        ("CT", "CHEST"),
        ("MR", "BRAIN"),
        ("MG", "BREAST"),
        ("CR", "CHEST"),
        ("US", "ABDOMEN"),
    ]
    patients = Patient.objects.bulk_create(
        [
            Patient(
                institution=insts[i % len(insts)],
                patient_id=f"BP{i:07d}",
                name=f"BENCH^{i}",
                birth_date=date(1940 + i % 80, 1, 1),
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
    studies = Study.objects.bulk_create(
        [
            Study(
                institution_id=p.institution_id,
                patient=p,
                study_instance_uid=f"1.2.826.0.1.3680043.10.99.{i}",
                accession_number=f"B{i}",
                modalities=modalities[i % 6][0],
                state="complete",
                study_date=date(2026, 11, 2),
            )
            for i, p in enumerate(patients)
        ],
        batch_size=2000,
    )
    Series.objects.bulk_create(
        [
            Series(
                study=s,
                series_instance_uid=f"{s.study_instance_uid}.1",
                modality=modalities[i % 6][0],
                body_part=modalities[i % 6][1],
                num_instances=100,
            )
            for i, s in enumerate(studies)
        ],
        batch_size=2000,
    )
    return [s.pk for s in studies]


def six_rules(pools) -> dict:
    def pool(i: int, **kw) -> dict:
        return {"kind": "pool", "pool": str(pools[i].pk), **kw}

    return {
        "rules": [
            {"name": "Paediatric", "when": {"max_age": 15}, "offer_to": [pool(1)]},
            {
                "name": "Neuro",
                "when": {"body_parts": ["HEAD", "BRAIN"]},
                "offer_to": [{"kind": "own"}, pool(0, subspecialty="neuro")],
                "escalation": [{"offer_to": [pool(2)]}],
            },
            {"name": "Mammography", "when": {"modalities": ["MG"]}, "offer_to": [pool(3)], "double_reading": True},
            {"name": "Nights", "when": {"hours": {"from": "20:00", "to": "08:00"}}, "offer_to": [pool(0)]},
            {"name": "Weekends", "when": {"weekdays": ["sat", "sun"]}, "offer_to": [pool(0)]},
            {"name": "Stat", "when": {"priorities": ["stat"]}, "offer_to": [{"kind": "own"}, pool(4)]},
        ],
        "fallback": {"offer_to": [{"kind": "own"}, pool(0)], "escalation": [{"offer_to": [pool(2)]}]},
    }


# 1. Routing ---------------------------------------------------------------------


def _route_worker(study_ids: list, out: multiprocessing.Queue) -> None:
    setup_django()
    from archive.models import Study
    from workflow.actions import do_route_studies, do_start_reading_process

    started = time.perf_counter()
    for chunk in range(0, len(study_ids), 500):
        studies = list(
            Study.objects.filter(pk__in=study_ids[chunk : chunk + 500]).select_related("institution", "patient")
        )
        chunk_started = time.perf_counter()
        if BATCHED:
            do_route_studies(studies)
        else:
            for study in studies:
                do_start_reading_process(study)
        if os.environ.get("BENCH_VERBOSE"):
            print(
                f"# {os.getpid()} studies {chunk + len(studies)}: {len(studies) / (time.perf_counter() - chunk_started):.0f}/s",
                file=sys.stderr,
            )
    out.put(time.perf_counter() - started)


BATCHED = True


def bench_routing(args) -> None:
    global BATCHED
    BATCHED = args.routing_mode == "batch"
    from workflow.actions import do_save_routing_policy
    from workflow.models import ReadingTask

    _, insts, pools, _, _ = make_world()
    for inst in insts:
        do_save_routing_policy(inst, six_rules(pools), acting_user=None, name="bench")
    ids = make_studies(insts, args.studies)
    from django.db import connections

    connections.close_all()
    out: multiprocessing.Queue = multiprocessing.Queue()
    parts = [ids[i :: args.workers] for i in range(args.workers)]
    started = time.perf_counter()
    procs = [multiprocessing.Process(target=_route_worker, args=(part, out)) for part in parts]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    tasks = ReadingTask.objects.count()
    print(f"routing.mode={args.routing_mode}")
    print(f"routing.studies={args.studies}")
    print(f"routing.workers={args.workers}")
    print(f"routing.tasks_created={tasks}")
    print(f"routing.seconds={elapsed:.1f}")
    print(f"routing.tasks_per_s={tasks / elapsed:.0f}")
    print(f"routing.studies_per_s={args.studies / elapsed:.0f}")
    print(
        "routing.method=6-rule policy per hospital (20 hospitals, 5 pools, double reading for MG); "
        "do_start_reading_process per completed study in N processes; wall clock including process start"
    )


# 2. Claims ----------------------------------------------------------------------


def _claim_worker(user_ids: list, seed: int, stop_at: float, read_seconds: tuple, out: multiprocessing.Queue) -> None:
    """Some of the radiologists, one thread each, in one process (as web workers serve them)."""
    setup_django()
    from django.db import connection

    from pacs_cloud.models import User
    from workflow.access import offered_tasks, reader
    from workflow.actions import TaskRefused, do_claim_reading_task, do_finalize_task

    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    users = list(User.objects.filter(pk__in=user_ids))
    connection.close()
    start_at = time.time() + 2  # every process starts together

    def radiologist(user, rng: random.Random) -> None:
        try:
            who = reader(user)
            time.sleep(max(0.0, start_at - time.time()) + rng.uniform(0, 1.0))
            while time.time() < stop_at:
                candidates = list(offered_tasks(user, who).order_by("priority_rank", "due_at")[:20])
                if not candidates:
                    break
                # A reader picks from the top of their list, not always the very first row.
                rng.shuffle(candidates)
                for task in candidates:
                    began = time.perf_counter()
                    try:
                        do_claim_reading_task(task, acting_user=user)
                        result = "won"
                    except TaskRefused as refused:
                        result = refused.code
                    elapsed = time.perf_counter() - began
                    with lock:
                        latencies.append((time.time() - start_at, elapsed))
                        outcomes[result] = outcomes.get(result, 0) + 1
                    if result == "won":
                        time.sleep(rng.uniform(*read_seconds))  # reading the study
                        do_finalize_task(task, acting_user=user)
                        break
        finally:
            connection.close()

    threads = [
        threading.Thread(target=radiologist, args=(u, random.Random(seed * 1000 + i))) for i, u in enumerate(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((latencies, outcomes))


def bench_claims(args) -> None:
    from django.db import connection

    from pacs_cloud.fsm import history
    from workflow.actions import (
        TaskRefused,
        do_claim_reading_task,
        do_finalize_task,
        do_save_routing_policy,
        do_start_reading_process,
    )
    from workflow.models import ReadingTask

    _, insts, pools, readers, _ = make_world(hospitals=4, pools=1, readers=args.readers)
    policy = {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(pools[0].pk)}]}]}
    for inst in insts:
        do_save_routing_policy(inst, policy, acting_user=None)
    from archive.models import Study

    ids = make_studies(insts, args.claim_tasks)
    for study in Study.objects.filter(pk__in=ids).select_related("institution", "patient"):
        do_start_reading_process(study)

    from django.db import connections

    connections.close_all()
    stop_at = time.time() + args.claim_seconds + 2
    out: multiprocessing.Queue = multiprocessing.Queue()
    groups = [readers[i :: args.processes] for i in range(args.processes)]
    started = time.perf_counter()
    procs = [
        multiprocessing.Process(target=_claim_worker, args=([u.pk for u in group], n, stop_at, args.read_seconds, out))
        for n, group in enumerate(groups)
    ]
    for proc in procs:
        proc.start()
    timed: list[tuple[float, float]] = []
    outcomes: dict[str, int] = {}
    for _ in procs:
        part_latencies, part_outcomes = out.get()
        timed.extend(part_latencies)
        for key, value in part_outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + value
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started - 2
    lock = threading.Lock()
    latencies = [latency for _, latency in timed]
    # Everyone opens their worklist and claims in the first second; after
    # that the readers' own pace spreads the claims out.
    steady = [latency for at, latency in timed if at > 2 + max(args.read_seconds)]

    # Never two owners: in every task's log, no claim follows a claim without a release between.
    doubles = 0
    for task in ReadingTask.objects.exclude(state__in=["offered", "pending"]):
        holder = None
        for row in history(task):
            if row.method == "claim":
                if holder is not None:
                    doubles += 1
                holder = row.actor_id
            elif row.method in ("release", "expire", "reassign", "escalate"):
                holder = None
    won = outcomes.get("won", 0)
    print(f"claims.readers={args.readers}")
    print(f"claims.processes={args.processes}")
    print(f"claims.read_seconds={args.read_seconds[0]:g}-{args.read_seconds[1]:g}")
    print(f"claims.attempts={len(latencies)}")
    print(f"claims.won={won}")
    print(f"claims.lost_race={outcomes.get('not_open', 0)}")
    print(f"claims.per_s={won / elapsed:.1f}")
    print(f"claims.p50_ms={pct(latencies, 50) * 1000:.1f}")
    print(f"claims.p95_ms={pct(latencies, 95) * 1000:.1f}")
    print(f"claims.p99_ms={pct(latencies, 99) * 1000:.1f}")
    print(f"claims.max_ms={max(latencies) * 1000:.1f}")
    if steady:
        print(f"claims.steady_attempts={len(steady)}")
        print(f"claims.steady_p95_ms={pct(steady, 95) * 1000:.1f}")
        print(f"claims.steady_p99_ms={pct(steady, 99) * 1000:.1f}")
    print(f"claims.two_owners={doubles}")
    RUNS["claims"] = [{"at_s": round(at, 3), "ms": round(latency * 1000, 2)} for at, latency in timed]
    print(
        "claims.method=N radiologists as threads spread over --processes processes (as web workers serve them), one DB connection each: pick at random among the top 20 of the worklist, claim, read for --read-seconds, finalise; "
        "latency of do_claim_reading_task per attempt (won or lost); steady = attempts after the opening rush (the first read)"
    )

    # Bursts: everyone claims the same task at the same instant.
    burst_latencies: list[float] = []
    single_winner = 0
    open_ids = list(ReadingTask.objects.filter(state="offered").values_list("pk", flat=True)[: args.bursts])
    for task_id in open_ids:
        barrier = threading.Barrier(len(readers))
        winners: list[int] = []

        def rush(user, barrier=barrier, task_id=task_id, winners=winners) -> None:
            try:
                barrier.wait()
                began = time.perf_counter()
                try:
                    do_claim_reading_task(ReadingTask(pk=task_id), acting_user=user)
                    with lock:
                        winners.append(user.pk)
                except TaskRefused:
                    pass
                with lock:
                    burst_latencies.append(time.perf_counter() - began)
            finally:
                connection.close()

        rushers = [threading.Thread(target=rush, args=(u,)) for u in readers]
        for t in rushers:
            t.start()
        for t in rushers:
            t.join()
        single_winner += len(winners) == 1
        if winners:
            task = ReadingTask.objects.get(pk=task_id)
            do_finalize_task(task, acting_user=task.claimed_by)
    RUNS["burst_ms"] = [round(latency * 1000, 2) for latency in burst_latencies]
    print(f"burst.rounds={len(open_ids)}")
    print(f"burst.rounds_with_exactly_one_winner={single_winner}")
    print(f"burst.p50_ms={pct(burst_latencies, 50) * 1000:.1f}")
    print(f"burst.p99_ms={pct(burst_latencies, 99) * 1000:.1f}")
    print("burst.method=all readers released by a barrier onto the same task at once; latency per attempt")


# 3. Worklist ----------------------------------------------------------------------


def bench_worklist(args) -> None:
    from django.db import connection
    from django.utils import timezone
    from rest_framework.test import APIClient

    from archive.models import Study
    from pacs_cloud.authentication import issue_token
    from workflow.models import PRIORITY_RANK, ProcessInstance, ReadingTask, TaskOffer

    _, insts, pools, readers, own_rads = make_world()
    # A second reader who is in every pool.
    from workflow.models import PoolMember

    for pool in pools[1:]:
        PoolMember.objects.create(pool=pool, user=readers[1]).credentialed_for.set(insts)
    ids = make_studies(insts, args.open_tasks)
    now = timezone.now()
    rng = random.Random(7)
    studies = list(Study.objects.filter(pk__in=ids).values_list("pk", "institution_id", "modalities"))
    processes = ProcessInstance.objects.bulk_create(
        [
            ProcessInstance(institution_id=inst, study_id=pk, rule_name="bench", plan={}, facts={})
            for pk, inst, _ in studies
        ],
        batch_size=5000,
    )
    priorities = ["stat"] * 5 + ["urgent"] * 20 + ["routine"] * 75
    tasks = []
    for process, (pk, inst, modality) in zip(processes, studies, strict=True):
        priority = rng.choice(priorities)
        tasks.append(
            ReadingTask(
                id=uuid.uuid4(),
                process=process,
                study_id=pk,
                institution_id=inst,
                state="offered",
                priority=priority,
                priority_rank=PRIORITY_RANK[priority],
                modality=modality,
                body_part="CHEST",
                procedure=f"{modality} study",
                offered_at=now,
                due_at=now + timedelta(minutes=rng.randint(10, 2880)),
                sla_minutes=1440,
            )
        )
    ReadingTask.objects.bulk_create(tasks, batch_size=5000)
    offers = []
    for i, task in enumerate(tasks):
        offers.append(TaskOffer(task=task, hospital_id=task.institution_id, kind="own"))
        offers.append(TaskOffer(task=task, hospital_id=task.institution_id, kind="pool", pool=pools[i % len(pools)]))
    TaskOffer.objects.bulk_create(offers, batch_size=10000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    queries = [
        "",
        "?ordering=sla",
        "?ordering=-priority",
        "?ordering=hospital",
        "?modality=CT",
        "?priority=stat",
        f"?hospital={insts[0].pk}",
        "?modality=MR&ordering=sla",
    ]
    results = {}
    for label, user in [("pool_member", readers[0]), ("every_pool", readers[1]), ("hospital_radiologist", own_rads[0])]:
        _, key = issue_token(user, name="bench")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        timings = []
        count = 0
        for rep in range(args.worklist_requests):
            query = queries[rep % len(queries)]
            began = time.perf_counter()
            response = client.get("/api/v1/reading-tasks/" + query)
            timings.append(time.perf_counter() - began)
            assert response.status_code == 200, response.content[:300]
            if query == "":
                count = response.json()["count"]
        results[label] = (count, timings)
    print(f"worklist.open_tasks={ReadingTask.objects.filter(state='offered').count()}")
    for label, (count, timings) in results.items():
        print(f"worklist.{label}.visible={count}")
        RUNS[f"worklist.{label}_ms"] = [round(t * 1000, 2) for t in timings]
        print(f"worklist.{label}.p50_ms={pct(timings, 50) * 1000:.1f}")
        print(f"worklist.{label}.p95_ms={pct(timings, 95) * 1000:.1f}")
    print(
        "worklist.method=GET /api/v1/reading-tasks/ (count + first page of 50, bearer token, DRF serialisation) "
        "in-process via the test client, 8 sort/filter variants rotated"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["routing", "claims", "worklist"], action="append")
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--routing-mode",
        choices=["batch", "single"],
        default="batch",
        help="batch: do_route_studies (25 per transaction, the backlog path); single: one transaction per study",
    )
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--claim-tasks", type=int, default=3000)
    parser.add_argument("--claim-seconds", type=float, default=60)
    parser.add_argument("--processes", type=int, default=5, help="processes the claiming radiologists are spread over")
    parser.add_argument(
        "--read-seconds",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default=(5.0, 15.0),
        help="min,max seconds a reader spends on a study between claims (default 5,15)",
    )
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--open-tasks", type=int, default=100_000)
    parser.add_argument("--worklist-requests", type=int, default=240)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "workflow_bench.json")
    args = parser.parse_args()
    setup_django()
    run = Run(database=os.environ["DATABASE_URL"])
    with Figures() as figures:
        for part in args.only or ["routing", "claims", "worklist"]:
            reset_database()
            {"routing": bench_routing, "claims": bench_claims, "worklist": bench_worklist}[part](args)
            sys.stdout.flush()
    settings = {key: value for key, value in vars(args).items() if key != "results"}
    run.write(
        args.results.stem,
        {"benchmark": "reading workflow engine", "settings": settings, "figures": figures.values, "runs": RUNS},
        directory=args.results.parent,
    )


if __name__ == "__main__":
    main()
