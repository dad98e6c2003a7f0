#!/usr/bin/env python
"""Benchmark of reports on PostgreSQL.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_reports_bench \
        .venv/bin/python bench/report_bench.py [--sign 30] [--reports 100000] [--lookups 300] \
        [--results bench/results/report_bench.json]

Two measurements, printed as ``key=value`` lines and written with every
run's timings, the machine, its load average and the versions to
``--results`` (``bench/results/report_bench.json``):

1. sign: ``--sign`` reports, each on its own archived CT study (real ingest)
   with a key image, are signed final and exported: re-authentication, Ed25519
   signature over the canonical form, the version row, the report transition,
   the study marked reported, the audit events; then the PDF (key image
   rendered) and the DICOM Encapsulated PDF stored through the archive's
   ingest. Two cases, p50/p95 of the three together and of each part:
   ``password``, the password re-entered for every signature (Argon2 check),
   and ``window``, signatures inside the signing window that one password
   opened for a browser session (``REPORTS_SIGN_WINDOW_SECONDS``).
2. lookup: ``--reports`` reports (bulk-created with their patients and
   studies) over 20 hospitals; a clinician of one hospital who also holds
   grants on 200 studies of the others searches through the full
   Django/DRF stack in-process (``GET /api/v1/reports/``, audited): by
   patient id, name prefix, accession number, date range and modality,
   status, and the default list. p50/p95 over ``--lookups`` requests.

The database named by BENCH_DATABASE_URL is emptied and migrated first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-password-123"  # noqa: S105 (a throwaway user of the bench database)


def setup_django() -> None:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_reports_bench")
    if not url.startswith("postgres"):
        sys.exit("BENCH_DATABASE_URL must point at PostgreSQL")
    os.environ["DATABASE_URL"] = url
    data = os.environ.setdefault("PACS_DATA_DIR", "/tmp/pacs-reports-bench")  # noqa: S108 (scratch folder)
    os.environ.setdefault("STORAGE_URL", f"file://{data}/storage")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
    import django

    django.setup()
    from django.conf import settings

    from pacs_cloud import push

    push.IN_WEB_PROCESS = True
    settings.REPORTS_EXPORT_ON_SIGN = False  # the bench runs the export itself, timed
    settings.ALLOWED_HOSTS = ["*"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def reset_database() -> None:
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)


def make_world(hospitals: int = 20):
    from pacs_cloud.models import Institution, Membership, Role, User

    insts = [
        Institution.objects.create(
            slug=f"bench-{i}",
            name=f"Bench Hospital {i}",
            accession_prefix=f"B{i:02d}",
            patient_id_issuer=f"B{i:02d}",
            time_zone="Asia/Shanghai",
        )
        for i in range(hospitals)
    ]
    radiologist = User.objects.create(username="rad@bench", display_name="Dr Bench Reader")
    radiologist.set_password(PASSWORD)  # the product's Argon2 hasher: signing checks it again
    radiologist.save()
    clinician = User.objects.create(username="doc@bench", display_name="Dr Bench Clinician")
    Membership.objects.create(user=radiologist, institution=insts[0], role=Role.RADIOLOGIST)
    Membership.objects.create(user=clinician, institution=insts[0], role=Role.CLINICIAN)
    return insts, radiologist, clinician


# 1. Sign + PDF + DICOM export -------------------------------------------------------


def archive_ct(institution, n: int):
    import pydicom
    from pydicom.data import get_testdata_file

    from archive.ingest import store_instance
    from pacs_cloud.lib.uids import new_uid

    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientName = f"SIGN^PATIENT{n}"
    ds.PatientID = f"SIGN{n:06d}"
    ds.IssuerOfPatientID = institution.patient_id_issuer
    ds.AccessionNumber = f"S{n:06d}"
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        return store_instance(path, institution=institution).instance


def prepare_reports(insts, radiologist, count: int, first: int) -> list:
    """``count`` drafts, each on its own archived CT study with a key image, ready to sign."""
    from archive.actions import do_complete_study
    from archive.models import Study
    from reports import actions

    prepared = []
    for n in range(first, first + count):
        instance = archive_ct(insts[0], n)
        study = Study.objects.select_related("patient", "institution").get(pk=instance.series.study_id)
        do_complete_study(study, actor_label="bench")
        report, _ = actions.do_create_report(study, acting_user=radiologist)
        content = {
            **report.draft,
            "findings": "A 6 mm nodule in the right upper lobe. " * 8,
            "impression": "Indeterminate nodule; CT follow-up in 6 months.",
            "key_images": [{"instance": str(instance.pk), "frame": 1, "note": "nodule"}],
        }
        prepared.append(actions.do_autosave_draft(report, acting_user=radiologist, content=content, base_revision=None))
    return prepared


def signed_in_request(radiologist):
    """A request of the radiologist's browser session, as the editor's sign dialog sends it."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import login
    from django.test import RequestFactory

    request = RequestFactory().post("/api/v1/reports/sign/")
    request.session = import_module(settings.SESSION_ENGINE).SessionStore()
    login(request, radiologist, backend="django.contrib.auth.backends.ModelBackend")
    request.session.save()
    return request


def sign_case(prepared, sign_one, auth_times: list[float]) -> list[dict[str, float]]:
    """Sign, render the PDF and archive the DICOM export of each report; every run's timings in ms."""
    from reports import exports
    from reports.pdf import render_pdf

    runs = []
    for i, report in enumerate(prepared):
        auth_times.clear()
        c0 = time.process_time()
        t0 = time.perf_counter()
        version = sign_one(report)
        t1 = time.perf_counter()
        pdf = render_pdf(version)
        t2 = time.perf_counter()
        exports.store_in_archive(version, pdf)
        t3 = time.perf_counter()
        c3 = time.process_time()
        if i < 3:
            continue  # warm-up: imports, first renders, connection
        password = sum(auth_times)
        runs.append(
            {
                "password_given": bool(auth_times),
                "total_ms": round((t3 - t0) * 1000, 2),
                "sign_ms": round((t1 - t0) * 1000, 2),
                "password_check_ms": round(password * 1000, 2),
                "pdf_ms": round((t2 - t1) * 1000, 2),
                "dicom_ms": round((t3 - t2) * 1000, 2),
                # This process's CPU time (not PostgreSQL's): wall time above it is waiting,
                # for the database or for a core on a loaded machine.
                "cpu_ms": round((c3 - c0) * 1000, 2),
                "pdf_bytes": len(pdf),
            }
        )
    return runs


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {"runs": len(runs)}
    for part in ("total_ms", "sign_ms", "password_check_ms", "pdf_ms", "dicom_ms", "cpu_ms"):
        values = [r[part] for r in runs]
        out[f"{part[:-3]}_p50_ms"] = round(pct(values, 50), 1)
        out[f"{part[:-3]}_p95_ms"] = round(pct(values, 95), 1)
    return out


def bench_sign(args, insts, radiologist, results: dict) -> None:
    from reports import actions
    from reports.signing import active_key

    active_key(radiologist)  # made once per radiologist, not per signature
    # Time the re-authentication inside the signature on its own: Argon2 is slow
    # on purpose (the product's hasher), and dominates a signature that needs it.
    auth_times: list[float] = []
    password_ok = actions._password_ok

    def timed_password_ok(*a, **kw):
        t = time.perf_counter()
        try:
            return password_ok(*a, **kw)
        finally:
            auth_times.append(time.perf_counter() - t)

    actions._password_ok = timed_password_ok
    count = args.sign + 3
    with_password = prepare_reports(insts, radiologist, count, 0)
    in_window = prepare_reports(insts, radiologist, count, count)

    # 1a. The password re-entered for the signature (outside a signing window).
    def sign_with_password(report):
        return actions.do_sign_report(report, acting_user=radiologist, password=PASSWORD)

    # 1b. Inside the signing window: the session's first signature gave the
    # password (a warm-up run); the others give none.
    request = signed_in_request(radiologist)

    def sign_in_window(report):
        given = PASSWORD if not actions.signing.window_until(request, radiologist) else ""
        return actions.do_sign_report(report, acting_user=radiologist, password=given, request=request)

    cases = {
        "password": sign_case(with_password, sign_with_password, auth_times),
        "window": sign_case(in_window, sign_in_window, auth_times),
    }
    for name, runs in cases.items():
        stats = summary(runs)
        results["sign"][name] = {"summary": stats, "runs": runs}
        for key, value in stats.items():
            print(f"sign.{name}.{key}={value}")
    print(f"sign.pdf_bytes={cases['window'][-1]['pdf_bytes']}")


# 2. Lookup over many reports ----------------------------------------------------------


def bulk_reports(insts, radiologist, count: int) -> list:
    from django.utils import timezone

    from archive.models import Patient, Study
    from archive.names import name_forms
    from reports.actions import _search_name
    from reports.models import Report

    rng = random.Random(11)
    families = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU", "DOE", "SMITH"]
    modalities = ["CT", "MR", "DX", "US", "CT", "CT", "MR"]
    states = ["final"] * 7 + ["amended", "preliminary", "draft"]
    now = timezone.now()
    batch = 5000
    study_ids = []
    for start in range(0, count, batch):
        patients, studies, reports = [], [], []
        for n in range(start, min(count, start + batch)):
            inst = insts[n % len(insts)]
            name = f"{rng.choice(families)}^GIVEN{n % 997}"
            patient = Patient(
                institution=inst,
                patient_id=f"P{n:07d}",
                issuer=inst.patient_id_issuer,
                name=name,
                name_search=name_forms(name).alphabetic,
                name_words=name_forms(name).words,
            )
            day = date(2020, 1, 1) + timedelta(days=rng.randrange(2500))
            modality = rng.choice(modalities)
            study = Study(
                institution=inst,
                patient=patient,
                study_instance_uid=f"2.25.{uuid.uuid4().int}",
                study_date=day,
                accession_number=f"A{n:08d}",
                modalities=modality,
                description=f"{modality} STUDY",
                state="reported",
            )
            state = rng.choice(states)
            reports.append(
                Report(
                    institution=inst,
                    study=study,
                    author=radiologist,
                    state=state,
                    patient_id=patient.patient_id,
                    patient_name=name,
                    patient_name_search=_search_name(name),
                    accession_number=study.accession_number,
                    study_date=day,
                    modality=modality,
                    description=study.description,
                    signed_at=now if state in ("final", "amended") else None,
                    created_at=now,
                    updated_at=now,
                )
            )
            patients.append(patient)
            studies.append(study)
        Patient.objects.bulk_create(patients)
        for s in studies:
            s.patient_id = s.patient.pk
        Study.objects.bulk_create(studies)
        for r in reports:
            r.study_id = r.study.pk
        Report.objects.bulk_create(reports)
        study_ids.extend(s.pk for s in studies)
    return study_ids


def bench_lookup(args, insts, radiologist, clinician, results: dict) -> None:
    from django.db import connection
    from rest_framework.test import APIClient

    from archive.actions import grant_study_view
    from pacs_cloud.authentication import issue_token
    from reports.models import Report

    if not args.reuse:
        t0 = time.perf_counter()
        study_ids = bulk_reports(insts, radiologist, args.reports)
        print(f"lookup.load_seconds={time.perf_counter() - t0:.1f}")
        foreign = [pk for i, pk in enumerate(study_ids) if i % len(insts) != 0][:200]
        for study_id in foreign:
            grant_study_view(study_id, user=clinician)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"lookup.reports={Report.objects.count()}")
    own = list(
        Report.objects.filter(institution=insts[0]).values_list("patient_id", "accession_number", "patient_name")
    )
    rng = random.Random(5)
    _, key = issue_token(clinician, name="bench")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    def queries():
        pid, accession, name = rng.choice(own)
        start = date(2020, 1, 1) + timedelta(days=rng.randrange(2000))
        return [
            {"patient_id": pid},
            {"patient_name": name.split("^")[0][:3]},
            {"accession": accession},
            {"date_from": start.isoformat(), "date_to": (start + timedelta(days=90)).isoformat(), "modality": "CT"},
            {"status": "final"},
            {},
        ]

    for query in queries():  # warm-up
        client.get("/api/v1/reports/", query)
    latencies: dict[str, list[float]] = {}
    names = ["patient_id", "name_prefix", "accession", "dates_modality", "status", "default"]
    found = 0
    while sum(len(v) for v in latencies.values()) < args.lookups:
        for label, query in zip(names, queries(), strict=True):
            t = time.perf_counter()
            response = client.get("/api/v1/reports/", query)
            latencies.setdefault(label, []).append(time.perf_counter() - t)
            assert response.status_code == 200, response.content
            found += len(response.json()["results"])
    every = [v for values in latencies.values() for v in values]
    print(f"lookup.requests={len(every)}")
    print(f"lookup.results_returned={found}")
    print(f"lookup.p50_ms={pct(every, 50) * 1000:.1f}")
    print(f"lookup.p95_ms={pct(every, 95) * 1000:.1f}")
    for label, values in latencies.items():
        print(f"lookup.{label}.p95_ms={pct(values, 95) * 1000:.1f}")
    results["lookup"] = {
        "reports": Report.objects.count(),
        "requests": len(every),
        "results_returned": found,
        "p50_ms": round(pct(every, 50) * 1000, 1),
        "p95_ms": round(pct(every, 95) * 1000, 1),
        "kinds": {
            label: {
                "p50_ms": round(pct(values, 50) * 1000, 1),
                "p95_ms": round(pct(values, 95) * 1000, 1),
                "runs_ms": [round(v * 1000, 2) for v in values],
            }
            for label, values in latencies.items()
        },
    }


def environment() -> dict:
    """The machine, its load and the versions the figures were measured with."""
    import platform
    import socket
    from importlib.metadata import version

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = [
        "Django",
        "djangorestframework",
        "argon2-cffi",
        "cryptography",
        "reportlab",
        "pydicom",
        "psycopg2-binary",
    ]
    return {
        "machine": {
            "host": socket.gethostname(),
            "cpu": model,
            "cores": os.cpu_count(),
            "system": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "postgresql": postgres,
            **{name: _version(version, name) for name in packages},
        },
    }


def _version(version, name: str) -> str:
    try:
        return version(name)
    except Exception:  # noqa: BLE001 (not installed: say so in the results)
        return ""


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"results={path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sign", type=int, default=30)
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument(
        "--reuse", action="store_true", help="measure the lookup again on the reports a previous run loaded"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "report_bench.json")
    args = parser.parse_args()
    setup_django()
    results: dict = {
        "bench": "report_bench",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "arguments": {k: v for k, v in vars(args).items() if k != "results"},
        "load_average_before": os.getloadavg(),
        **environment(),
        "sign": {},
    }
    if args.reuse:
        from pacs_cloud.models import Institution, User

        insts = list(Institution.objects.filter(slug__startswith="bench-").order_by("accession_prefix"))
        rad, doc = User.objects.get(username="rad@bench"), User.objects.get(username="doc@bench")
        bench_lookup(args, insts, rad, doc, results)
    else:
        reset_database()
        insts, radiologist, clinician = make_world()
        if args.sign:
            bench_sign(args, insts, radiologist, results)
        if args.reports:
            bench_lookup(args, insts, radiologist, clinician, results)
    results["load_average_after"] = os.getloadavg()
    write_results(args.results, results)


if __name__ == "__main__":
    main()
