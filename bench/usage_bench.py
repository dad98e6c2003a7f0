#!/usr/bin/env python
"""What usage metering costs the hot paths, on PostgreSQL.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_usage_bench \\
        .venv/bin/python bench/usage_bench.py [--instances 200] [--rounds 3]

* ``count_later``: the in-memory add every received instance and rendered
  image makes, per call (200,000 calls, one thread);
* the background write of a buffer of 1,000 keys (one statement);
* ``record_usage``: one upsert (signed reports, pool readings, reads), p50/p95
  of 500;
* ingest: ``--instances`` small CT instances stored in-process
  (``store_instance``, file fsynced, index committed), with metering on and
  with ``count_later`` replaced by a no-op, alternating, ``--rounds`` each.

The database named by BENCH_DATABASE_URL is emptied and migrated first. The
figures and every run are written to ``bench/results/usage_bench.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Figures, Run  # noqa: E402


def setup_django(folder: str) -> str:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_usage_bench")
    if not url.startswith("postgres"):
        sys.exit("BENCH_DATABASE_URL must point at PostgreSQL")
    os.environ["DATABASE_URL"] = url
    os.environ["PACS_DATA_DIR"] = folder
    os.environ["STORAGE_URL"] = f"file://{folder}/objects"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)
    return url


def make_files(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "BENCH1", "BENCH^ONE", "CT", n + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.PixelData = np.zeros((64, 64), dtype=np.int16).tobytes()
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="pacs-usage-bench-")
    url = setup_django(folder)
    run = Run(database=url)

    from archive import ingest
    from pacs_cloud import metering
    from pacs_cloud.metering import counters
    from pacs_cloud.models import Institution

    institution = Institution.objects.create(
        slug="bench", name="基准医院", accession_prefix="BEN", patient_id_issuer="BENCH", time_zone="Asia/Shanghai"
    )
    runs: dict[str, list[float]] = {"count_later_us": [], "record_usage_ms": [], "ingest_on": [], "ingest_off": []}
    with Figures() as figures:
        calls = 200_000
        started = time.perf_counter()
        for _ in range(calls):
            metering.count_later(institution.pk, "images_rendered")
        per_call = (time.perf_counter() - started) / calls * 1e6
        runs["count_later_us"].append(per_call)
        print(f"count_later_us={per_call:.2f}")

        for n in range(1000):
            counters._buffer[(institution.pk, 29_000_000 + n, "images_rendered", "")] = 1
        started = time.perf_counter()
        metering.flush()
        print(f"flush_1000_keys_ms={(time.perf_counter() - started) * 1000:.1f}")

        for _ in range(500):
            started = time.perf_counter()
            metering.record_usage(institution, "reports_signed")
            runs["record_usage_ms"].append((time.perf_counter() - started) * 1000)
        quantiles = statistics.quantiles(runs["record_usage_ms"], n=20)
        print(f"record_usage_p50_ms={statistics.median(runs['record_usage_ms']):.2f}")
        print(f"record_usage_p95_ms={quantiles[18]:.2f}")

        real = metering.count_later
        for round_number in range(args.rounds):
            for label in ("on", "off"):
                ingest.metering.count_later = real if label == "on" else (lambda *a, **k: None)  # type: ignore[assignment]
                files = make_files(Path(tempfile.mkdtemp(dir=folder)), args.instances)
                session = ingest.IngestSession(ingest.Source("import", "bench"))
                started = time.perf_counter()
                for path in files:
                    ingest.store_instance(path, institution=institution, session=session)
                rate = args.instances / (time.perf_counter() - started)
                runs[f"ingest_{label}"].append(rate)
                print(f"ingest_{label}_round{round_number}_per_s={rate:.1f}")
        ingest.metering.count_later = real
        print(f"ingest_on_median_per_s={statistics.median(runs['ingest_on']):.1f}")
        print(f"ingest_off_median_per_s={statistics.median(runs['ingest_off']):.1f}")
        print(f"ingest_ratio={statistics.median(runs['ingest_on']) / statistics.median(runs['ingest_off']):.3f}")
    run.write("usage_bench", {"figures": figures.values, "runs": runs})


if __name__ == "__main__":
    main()
