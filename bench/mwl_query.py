"""Modality Worklist query latency: Cloud PACS beside Orthanc's worklist plugin.

What it measures: first the worklist's own work per query in-process
(``core``: the database query, matching and building the answers), then the
time a modality waits for its worklist, end to end, as
dcmtk ``findscu -W`` sees it (a new process and association per query, like
the peer harness; ``TCP_NODELAY=1`` on the client). Three queries:

* ``station_today`` — a CT station asks for its own steps of today (the
  query a modality sends all day long);
* ``patient_id`` — one patient by Patient ID;
* ``name_wildcard`` — Patient's Name with a trailing ``*``.

Data: ``--orders`` scheduled orders (default 10,000) spread over
``--institutions`` institutions (default 50), each with a CT and an MR
station, dated yesterday to three days ahead. Cloud PACS serves them from its
database through ``manage.py dicom_server`` (a separate process, as in
production); every query comes from one of the institution's stations, so it
sees only that institution's orders.

Orthanc (Debian package, ``libModalityWorklists``) reads one ``.wl`` file per
worklist item from a folder and has no notion of institutions, so it is run
twice: with all the orders in its folder (the same multi-tenant load) and with
one institution's share (a single-hospital Orthanc). Its files hold the same
attributes we answer, written by pydicom as ``dump2dcm`` would; queries use
the same keys, so both sides return the same matches (checked). Each query is
sent to both servers in turn (alternating who goes first), so both meet the
same machine load; ratios are taken within one phase.

Run from the repository root with a scratch database (bench data replaces
earlier bench data only: institutions whose slug starts ``bench-mwl-``)::

    BENCH_HOME=/tmp/bench-me ORTHANC_HTTP_PORT=18042 ORTHANC_DICOM_PORT=14242 \\
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_bench PACS_DATA_DIR=/tmp/pacs-bench \\
    .venv/bin/python bench/mwl_query.py [--runs 100] [--no-orthanc]

The Orthanc harness (``orthanc_up.sh``/``orthanc_down.sh``) is taken from
``PEER_BENCH_DIR`` (default ``/work/shared/bench``). Results are printed as
``key=value`` lines, saved to ``$BENCH_HOME/results/mwl-query.txt`` and
written to ``bench/results/mwl_query.json`` (``--results`` elsewhere): the
machine, its load, the versions, every query's time and match count, p50
and p95 per kind of query, ours and Orthanc's, and the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from pydicom import Dataset  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from archive.models import DicomNode, Patient  # noqa: E402
from pacs_cloud.lib.dicom_match import response_identifier  # noqa: E402
from pacs_cloud.lib.uids import new_uid  # noqa: E402
from pacs_cloud.models import Institution  # noqa: E402
from worklist.actions import patient_name_fields  # noqa: E402
from worklist.models import Order, Procedure, Station  # noqa: E402
from worklist.mwl import find_scheduled_steps, order_record  # noqa: E402

SLUG = "bench-mwl-"
TZ = "Asia/Shanghai"
SURNAMES = [
    ("WANG", "王"), ("LI", "李"), ("ZHANG", "张"), ("LIU", "刘"), ("CHEN", "陈"),
    ("YANG", "杨"), ("HUANG", "黄"), ("ZHAO", "赵"), ("WU", "吴"), ("ZHOU", "周"),
]  # fmt: skip
GIVEN = [("WEI", "伟"), ("FANG", "芳"), ("NA", "娜"), ("MIN", "敏"), ("JING", "静"), ("LEI", "磊"), ("YANG", "洋")]
ENV = {**os.environ, "TCP_NODELAY": "1"}
RESULTS: list[str] = []
# The same figures as a document, with every run (bench/results/mwl_query.json).
DOCUMENT: dict = {"benchmark": "mwl_query", "phases": {}, "ratios_p95": {}, "ratios_p50": {}}


def out(key: str, value: object) -> None:
    line = f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
    RESULTS.append(line)
    print(line, flush=True)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(0.95 * len(ordered))) - 1)]


def station_ae(i: int, modality: str) -> str:
    return f"BMWL{i:02d}{modality}"


# Data ----------------------------------------------------------------------


def clear() -> None:
    institutions = Institution.objects.filter(slug__startswith=SLUG)
    Order.objects.filter(institution__in=institutions).delete()
    Station.objects.filter(institution__in=institutions).delete()
    Procedure.objects.filter(institution__in=institutions).delete()
    Patient.objects.filter(institution__in=institutions).delete()
    DicomNode.objects.filter(institution__in=institutions).delete()
    institutions.delete()


@transaction.atomic
def seed(orders: int, institutions: int, seed_value: int) -> dt.date:
    rng = random.Random(seed_value)
    clear()
    today = dt.datetime.now(ZoneInfo(TZ)).date()
    per = orders // institutions
    for i in range(institutions):
        inst = Institution.objects.create(
            slug=f"{SLUG}{i:02d}", name=f"Bench hospital {i:02d}", accession_prefix=f"B{i:02d}",
            patient_id_issuer=f"BENCH{i:02d}", time_zone=TZ,
        )  # fmt: skip
        procedures = {
            "CT": Procedure.objects.create(institution=inst, code="CT1", name="CT chest", modality="CT",
                                           body_part="CHEST", duration_minutes=15),
            "MR": Procedure.objects.create(institution=inst, code="MR1", name="MR brain", modality="MR",
                                           body_part="HEAD", duration_minutes=30),
        }  # fmt: skip
        stations = {}
        for modality in ("CT", "MR"):
            node = DicomNode.objects.create(institution=inst, ae_title=station_ae(i, modality), host="127.0.0.1")
            stations[modality] = Station.objects.create(
                institution=inst, node=node, name=f"B{i:02d} {modality}", modality=modality
            )
        patients = []
        for k in range(per):
            (family, family_cn), (given, given_cn) = rng.choice(SURNAMES), rng.choice(GIVEN)
            patients.append(
                Patient(
                    institution=inst,
                    patient_id=f"B{i:02d}P{k:05d}",
                    issuer=inst.patient_id_issuer,
                    **patient_name_fields(f"{family}^I{i:02d}{given}{k:04d}={family_cn}^{given_cn}"),
                    birth_date=dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(25000)),
                    sex=rng.choice("MF"),
                )  # fmt: skip
            )
        Patient.objects.bulk_create(patients)
        rows = []
        for k, patient in enumerate(patients):
            modality = "CT" if k % 2 == 0 else "MR"
            day = today + dt.timedelta(days=(k // 2) % 5 - 1)
            moment = dt.time(8 + (k // 10) % 10, (k * 7) % 60)
            accession = f"B{i:02d}{k:06d}"
            rows.append(
                Order(
                    institution=inst,
                    patient=patient,
                    procedure=procedures[modality],
                    station=stations[modality],
                    accession_number=accession,
                    requested_procedure_id=accession,
                    sps_id=accession,
                    study_instance_uid=new_uid(),
                    priority="routine",
                    scheduled_at=dt.datetime.combine(day, moment, tzinfo=ZoneInfo(TZ)),
                    scheduled_date=day,
                    scheduled_time=moment,
                    modality=modality,
                )  # fmt: skip
            )
        Order.objects.bulk_create(rows)
    return today


def worklist_files(folder: Path, institution_slugs: list[str]) -> int:
    """One .wl file per order, holding every attribute our SCP answers."""
    for old in folder.glob("*.wl"):
        old.unlink()
    count = 0
    orders = (
        Order.objects.filter(institution__slug__in=institution_slugs)
        .select_related("patient", "procedure", "station__node", "institution")
        .iterator(chunk_size=1000)
    )
    for order in orders:
        record = order_record(order)
        everything = Dataset()
        for keyword, value in record.items():
            if isinstance(value, list):
                setattr(everything, keyword, Sequence([]))
            else:
                setattr(everything, keyword, None)
        item = response_identifier(everything, record, character_set="ISO_IR 192")
        item.file_meta = FileMetaDataset()
        item.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
        item.file_meta.MediaStorageSOPInstanceUID = new_uid()
        item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        item.save_as(folder / f"{order.accession_number}.wl", enforce_file_format=True)
        count += 1
    return count


# Queries -------------------------------------------------------------------

RETURN_KEYS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].Modality",
]


def queries(i: int, today: dt.date, rng: random.Random, per: int) -> dict[str, list[str]]:
    step = "ScheduledProcedureStepSequence[0]."
    return {
        "station_today": [
            f"{step}ScheduledStationAETitle={station_ae(i, 'CT')}",
            f"{step}ScheduledProcedureStepStartDate={today:%Y%m%d}",
        ],
        "patient_id": [f"PatientID=B{i:02d}P{rng.randrange(per):05d}"],
        "name_wildcard": [f"PatientName={rng.choice(SURNAMES)[0]}^I{i:02d}*"],
    }


def findscu(port: int, calling: str, called: str, keys: list[str]) -> tuple[float, int]:
    args = ["findscu", "-W", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    for key in keys:
        args += ["-k", key]
    for key in RETURN_KEYS:
        if not any(k.split("=")[0] == key for k in keys):
            args += ["-k", key]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"findscu failed: {result.stderr[-500:]}")
    return elapsed, (result.stdout + result.stderr).count("Find Response:")


class Series:
    """Latencies and match counts of one server for each kind of query."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.times: dict[str, list[float]] = {}
        self.matches: dict[str, list[int]] = {}

    def add(self, name: str, elapsed: float, count: int) -> None:
        self.times.setdefault(name, []).append(elapsed)
        self.matches.setdefault(name, []).append(count)

    def report(self) -> None:
        phase = DOCUMENT["phases"].setdefault(self.label, {})
        for name, times in self.times.items():
            out(f"{self.label}.{name}.n", len(times))
            out(f"{self.label}.{name}.median_ms", statistics.median(times))
            out(f"{self.label}.{name}.p95_ms", p95(times))
            out(f"{self.label}.{name}.matches_mean", statistics.mean(self.matches[name]))
            phase[name] = {
                "n": len(times),
                "p50_ms": round(statistics.median(times), 2),
                "p95_ms": round(p95(times), 2),
                "matches_mean": statistics.mean(self.matches[name]),
                "runs_ms": [round(t, 2) for t in times],
                "matches": self.matches[name],
            }


def compare(ours: Series, theirs: Series, *, our_port: int, their_port: int, their_aet: str,
            institutions: list[int], today: dt.date, runs: int, per: int) -> None:  # fmt: skip
    """Alternate the same queries between the two servers, so both meet the same machine load."""
    rng = random.Random(7)
    for run in range(runs):
        i = institutions[run % len(institutions)]
        for name, keys in queries(i, today, rng, per).items():
            pair = [(ours, our_port, station_ae(i, "CT"), "PACSCLOUD"), (theirs, their_port, "BENCHSCU", their_aet)]
            for series, port, calling, called in pair if run % 2 == 0 else reversed(pair):
                series.add(name, *findscu(port, calling, called, keys))
    ours.report()
    theirs.report()
    for name in ours.times:
        ratio = p95(ours.times[name]) / p95(theirs.times[name])
        out(f"ratio_p95.{name}.{ours.label}_over_{theirs.label}", ratio)
        DOCUMENT["ratios_p95"].setdefault(f"{ours.label}_over_{theirs.label}", {})[name] = round(ratio, 3)
        median = statistics.median(ours.times[name]) / statistics.median(theirs.times[name])
        DOCUMENT["ratios_p50"].setdefault(f"{ours.label}_over_{theirs.label}", {})[name] = round(median, 3)
        if ours.matches[name] != theirs.matches[name]:
            out(f"warning.{name}", f"match counts differ between {ours.label} and {theirs.label}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_echo(port: int, calling: str, called: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ok = subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                            capture_output=True, env=ENV).returncode == 0  # fmt: skip
        if ok:
            return
        time.sleep(0.3)
    raise RuntimeError("the DICOM service did not start")


def identifier_for(keys: list[str]) -> Dataset:
    """The C-FIND identifier findscu builds from ``-k`` keys (this script's subset of its syntax)."""
    ds = Dataset()
    step = Dataset()
    ds.ScheduledProcedureStepSequence = Sequence([step])
    for key in [*keys, *RETURN_KEYS]:
        path, _, value = key.partition("=")
        target, keyword = (step, path.split(".", 1)[1]) if "." in path else (ds, path)
        if keyword not in target or value:
            setattr(target, keyword, value)
    return ds


def measure_core(args: argparse.Namespace, today: dt.date) -> None:
    """The worklist's own work per query (database and matching, no network): find_scheduled_steps."""
    per = args.orders // args.institutions
    core = Series("core")
    rng = random.Random(7)
    institutions = {i: Institution.objects.get(slug=f"{SLUG}{i:02d}") for i in range(args.institutions)}
    for k in range(args.runs):
        i = k % args.institutions
        for name, keys in queries(i, today, rng, per).items():
            identifier = identifier_for(keys)
            started = time.perf_counter()
            count = len(list(find_scheduled_steps(identifier, institutions[i])))
            core.add(name, (time.perf_counter() - started) * 1000, count)
    core.report()


def start_ours() -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dicom_server", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        start_new_session=True,
    )
    wait_for_echo(port, station_ae(0, "CT"), "PACSCLOUD")
    return server, port


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def start_orthanc(harness: Path, env: dict[str, str]) -> dict[str, str]:
    up = subprocess.run([str(harness / "orthanc_up.sh")], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"orthanc_up.sh failed: {up.stderr}")
    print(up.stdout.strip(), flush=True)
    lines = (Path(os.environ["BENCH_HOME"]) / "data" / "orthanc.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run(args: argparse.Namespace, today: dt.date) -> None:
    per = args.orders // args.institutions
    server, port = start_ours()
    harness = Path(os.environ.get("PEER_BENCH_DIR", "/work/shared/bench"))
    env = {**os.environ, "ORTHANC_TCP_NODELAY": "1"}
    try:
        for i in range(min(5, args.institutions)):  # warm-up: connections, query plans
            findscu(port, station_ae(i, "CT"), "PACSCLOUD", queries(i, today, random.Random(1), per)["station_today"])
        if args.no_orthanc:
            alone = Series("ours")
            rng = random.Random(7)
            for k in range(args.runs):
                i = k % args.institutions
                for name, keys in queries(i, today, rng, per).items():
                    alone.add(name, *findscu(port, station_ae(i, "CT"), "PACSCLOUD", keys))
            alone.report()
            return
        state = start_orthanc(harness, env)
        try:
            folder, their_port, their_aet = (
                Path(state["ORTHANC_WORKLISTS"]), int(state["ORTHANC_DICOM_PORT"]), state["ORTHANC_AET"]
            )  # fmt: skip
            slugs = [f"{SLUG}{i:02d}" for i in range(args.institutions)]
            started = time.perf_counter()
            out("orthanc_all.items_written", worklist_files(folder, slugs))
            out("orthanc_all.write_s", time.perf_counter() - started)
            wait_for_echo(their_port, "BENCHSCU", their_aet)
            compare(Series("ours_all"), Series("orthanc_all"), our_port=port, their_port=their_port,
                    their_aet=their_aet, institutions=list(range(args.institutions)), today=today,
                    runs=args.runs, per=per)  # fmt: skip
            one_hospital = worklist_files(folder, slugs[:1])
            out("orthanc_one.items_written", one_hospital)
            DOCUMENT["data"]["one_hospital_items"] = one_hospital
            compare(Series("ours_one"), Series("orthanc_one"), our_port=port, their_port=their_port,
                    their_aet=their_aet, institutions=[0], today=today, runs=args.runs, per=per)  # fmt: skip
        finally:
            subprocess.run([str(harness / "orthanc_down.sh")], env=env, check=False)
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--institutions", type=int, default=50)
    parser.add_argument("--runs", type=int, default=100, help="queries of each kind per server")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "mwl_query.json")
    args = parser.parse_args()
    if not shutil.which("findscu"):
        sys.exit("dcmtk's findscu is needed (apt-get install dcmtk)")
    if "BENCH_HOME" not in os.environ:
        sys.exit("set BENCH_HOME (and ORTHANC_HTTP_PORT / ORTHANC_DICOM_PORT) as the harness README says")
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    today = seed(args.orders, args.institutions, args.seed)
    out("data.orders", Order.objects.filter(institution__slug__startswith=SLUG).count())
    out("data.institutions", args.institutions)
    out("data.seed_s", time.perf_counter() - started)
    out("data.database", django.db.connection.vendor)
    out("machine.cpus", os.cpu_count())
    out("machine.load_avg_1m_start", os.getloadavg()[0])
    describe(args)
    out("method", "dcmtk findscu -W, new process and association per query, TCP_NODELAY=1; "
        f"{args.runs} queries of each kind per server, rotating over the institutions")  # fmt: skip
    measure_core(args, today)
    run(args, today)
    out("machine.load_avg_1m_end", os.getloadavg()[0])
    DOCUMENT["machine"]["load_avg_end"] = list(os.getloadavg())
    results = Path(os.environ["BENCH_HOME"]) / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "mwl-query.txt").write_text("\n".join(RESULTS) + "\n")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(DOCUMENT, indent=1, ensure_ascii=False) + "\n")
    clear()


def describe(args: argparse.Namespace) -> None:
    """Machine, versions and method, at the head of the results document."""
    import pydicom
    import pynetdicom

    def version(command: list[str]) -> str:
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except OSError:
            return ""
        return (run.stdout or run.stderr).strip().splitlines()[0] if (run.stdout or run.stderr).strip() else ""

    database = django.db.connection.vendor
    if database == "postgresql":
        with django.db.connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            database += " " + cursor.fetchone()[0]
    DOCUMENT.update(
        {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_avg_start": list(os.getloadavg()),
            },
            "versions": {
                "python": platform.python_version(),
                "django": django.get_version(),
                "pydicom": pydicom.__version__,
                "pynetdicom": pynetdicom.__version__,
                "database": database,
                "dcmtk_findscu": version(["findscu", "--version"]),
                "orthanc": version(["Orthanc", "--version"]),
            },
            "data": {"orders": args.orders, "institutions": args.institutions, "one_hospital_items": None},
            "method": (
                f"dcmtk findscu -W, a new process and association per query, TCP_NODELAY=1; {args.runs} queries "
                "of each kind per server, alternating ours and Orthanc's (who goes first alternates); "
                "ours_all/orthanc_all: Orthanc holding every institution's items, "
                "ours_one/orthanc_one: Orthanc holding one institution's (a one-hospital Orthanc); "
                "core: the worklist's own work in-process (database, matching, answers)"
            ),
        }
    )


if __name__ == "__main__":
    main()
