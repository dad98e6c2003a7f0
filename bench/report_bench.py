#!/usr/bin/env python
"""Benchmark of reports on PostgreSQL.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_reports_bench \
        .venv/bin/python bench/report_bench.py [--sign 30] [--reports 100000] [--lookups 300]

Two measurements, printed as ``key=value`` lines:

1. sign: ``--sign`` reports, each on its own archived CT study (real ingest)
   with a key image, are signed final and exported: re-authentication
   (Argon2 password check), Ed25519 signature over the canonical form, the
   version row, the report transition, the study marked reported, the audit
   events; then the PDF (key image rendered) and the DICOM Encapsulated PDF
   stored through the archive's ingest. p50/p95 of the three together, and of
   each part.
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
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
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


def bench_sign(args, insts, radiologist) -> None:
    from archive.actions import do_complete_study
    from archive.models import Study
    from reports import actions, exports
    from reports.pdf import render_pdf
    from reports.signing import active_key

    active_key(radiologist)  # made once per radiologist, not per signature
    # Time the re-authentication inside the signature on its own: Argon2 is slow
    # on purpose (the product's hasher), and dominates the total.
    auth_times: list[float] = []
    password_ok = actions._password_ok

    def timed_password_ok(*a, **kw):
        t = time.perf_counter()
        try:
            return password_ok(*a, **kw)
        finally:
            auth_times.append(time.perf_counter() - t)

    actions._password_ok = timed_password_ok
    prepared = []
    for n in range(args.sign + 3):
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
    totals, signs, pdfs, dicoms, auths, rest = [], [], [], [], [], []
    for i, report in enumerate(prepared):
        t0 = time.perf_counter()
        version = actions.do_sign_report(report, acting_user=radiologist, password=PASSWORD)
        t1 = time.perf_counter()
        pdf = render_pdf(version)
        t2 = time.perf_counter()
        exports.store_in_archive(version, pdf)
        t3 = time.perf_counter()
        if i < 3:
            continue  # warm-up: imports, first renders, connection
        signs.append(t1 - t0)
        pdfs.append(t2 - t1)
        dicoms.append(t3 - t2)
        totals.append(t3 - t0)
        auths.append(auth_times[-1])
        rest.append(t3 - t0 - auth_times[-1])
    print(f"sign.reports={len(totals)}")
    print(f"sign.total_p50_ms={pct(totals, 50) * 1000:.1f}")
    print(f"sign.total_p95_ms={pct(totals, 95) * 1000:.1f}")
    print(f"sign.password_check_p50_ms={pct(auths, 50) * 1000:.1f}")
    print(f"sign.total_without_password_check_p50_ms={pct(rest, 50) * 1000:.1f}")
    print(f"sign.total_without_password_check_p95_ms={pct(rest, 95) * 1000:.1f}")
    print(f"sign.sign_p50_ms={pct(signs, 50) * 1000:.1f}")
    print(f"sign.pdf_p50_ms={pct(pdfs, 50) * 1000:.1f}")
    print(f"sign.dicom_p50_ms={pct(dicoms, 50) * 1000:.1f}")
    print(f"sign.pdf_bytes={len(pdf)}")


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


def bench_lookup(args, insts, radiologist, clinician) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sign", type=int, default=30)
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument(
        "--reuse", action="store_true", help="measure the lookup again on the reports a previous run loaded"
    )
    args = parser.parse_args()
    setup_django()
    if args.reuse:
        from pacs_cloud.models import Institution, User

        insts = list(Institution.objects.filter(slug__startswith="bench-").order_by("accession_prefix"))
        bench_lookup(args, insts, User.objects.get(username="rad@bench"), User.objects.get(username="doc@bench"))
        return
    reset_database()
    insts, radiologist, clinician = make_world()
    if args.sign:
        bench_sign(args, insts, radiologist)
    if args.reports:
        bench_lookup(args, insts, radiologist, clinician)


if __name__ == "__main__":
    main()
