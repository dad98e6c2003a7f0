#!/usr/bin/env python
"""Benchmark of the archive's copies: replication lag, scrub rate, recall from nearline.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_copies_bench \
        [BENCH_S3_ENDPOINT_URL=http://127.0.0.1:7480 AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…] \
        .venv/bin/python bench/archive_copies_bench.py [--series 3] [--slices 300] [--only replication,scrub,recall]

Three measurements, printed as ``key=value`` lines:

1. replication: ``--series`` 300-slice 512×512 CT series ingested back to
   back (``store_instance``, file system default location) while the copier
   sweeps every ``REPLICATION_SWEEP_SECONDS`` in another thread, copying to a
   second site (a Ceph RGW bucket with ``BENCH_S3_ENDPOINT_URL``, else a
   second folder) and reading each copy back to verify its SHA-256. Lag of
   each object: received to verified copy at the second site; p50/p95/max.
2. scrub: the scrubber re-reading every copy of the file system location with
   no rate limit (MB/s); then the ingest rate of one series alone and while
   the scrubber runs at its default rate limit (the ratio).
3. recall: a 300-slice series moved to a nearline location by a lifecycle rule
   (online copies removed); time from a read of the study to its first
   rendered image (JPEG), which is served from the nearline copy while the
   recall copies the study back online.

The database is emptied and migrated first; the figures, machine, load and
versions go to ``bench/results/archive_copies.json`` (with ``--only``, to
``archive_copies_<what>.json``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Figures, Run  # noqa: E402
from scratch import scratch_django  # noqa: E402

SCRATCH = Path(tempfile.gettempdir()) / "pacs-copies-bench"


def setup_django() -> str:
    return scratch_django(SCRATCH, database="pacs_copies_bench", objects="site-a")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def make_series(folder: Path, slices: int, seed: int) -> list[Path]:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(1, slices + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = f"BENCH{seed}", "张三", "19700101", "M"
        ds.StudyDate, ds.StudyTime, ds.Modality, ds.AccessionNumber = "20240301", "101500", "CT", f"B{seed}"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.ImagePositionPatient = [0, 0, number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = rng.integers(-1000, 1000, size=(512, 512), dtype=np.int16).tobytes()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ingest(paths: list[Path], institution) -> float:
    """Store the files in one session; returns instances per second."""
    from archive.ingest import IngestSession, Source, store_instance

    session = IngestSession(Source("bench", "BENCH_CT"))
    started = time.perf_counter()
    for path in paths:
        store_instance(path, institution=institution, session=session)
    return len(paths) / (time.perf_counter() - started)


def second_site():
    from archive.copies import locations
    from archive.models import StorageLocation

    endpoint = os.environ.get("BENCH_S3_ENDPOINT_URL", "")
    if endpoint:
        location = StorageLocation.objects.create(
            name="site-b",
            kind="s3",
            bucket=f"bench-{uuid.uuid4().hex[:10]}",
            endpoint_url=endpoint,
            site="site-b",
            read_rank=20,
        )
    else:
        location = StorageLocation.objects.create(
            name="site-b", kind="filesystem", path=str(SCRATCH / "site-b"), site="site-b", read_rank=20
        )
    locations.forget()
    return location


def bench_replication(institution, series: int, slices: int, runs: dict) -> None:
    from django.conf import settings
    from django.db import close_old_connections

    from archive.copies.tasks import sweep_replication
    from archive.models import Instance, ObjectCopy

    settings.ARCHIVE_COPIES = settings.ARCHIVE_SITES = 2
    location = second_site()
    print(f"replication_second_site={location.kind}")
    files = [make_series(SCRATCH / "in" / f"r{n}", slices, n) for n in range(series)]
    stop = threading.Event()

    def copier() -> None:
        while not stop.is_set():
            sweep_replication()
            close_old_connections()
            stop.wait(settings.REPLICATION_SWEEP_SECONDS)

    thread = threading.Thread(target=copier)
    thread.start()
    rates = [ingest(paths, institution) for paths in files]
    total = series * slices
    deadline = time.monotonic() + 600
    while ObjectCopy.objects.filter(location=location).count() < total and time.monotonic() < deadline:
        time.sleep(1)
    stop.set()
    thread.join()
    received = dict(Instance.objects.values_list("pk", "received_at"))
    lags = [
        (verified - received[pk]).total_seconds()
        for pk, verified in ObjectCopy.objects.filter(location=location).values_list("instance_id", "verified_at")
    ]
    runs["replication_lag_seconds"] = lags
    print(f"replication_ingest_instances_per_second={sum(rates) / len(rates):.0f}")
    print(f"replication_copies={len(lags)} of {total}")
    print(f"replication_lag_p50_s={pct(lags, 50):.1f}")
    print(f"replication_lag_p95_s={pct(lags, 95):.1f}")
    print(f"replication_lag_max_s={max(lags):.1f}")
    print(f"replication_sweep_seconds={settings.REPLICATION_SWEEP_SECONDS:.0f}")


def bench_scrub(institution, slices: int, runs: dict) -> None:
    from django.conf import settings
    from django.db import close_old_connections

    from archive.copies.tasks import scrub_copies
    from archive.models import Instance, ObjectCopy, StorageLocation

    if not Instance.objects.exists():
        ingest(make_series(SCRATCH / "in" / "s0", slices, 100), institution)
    default = StorageLocation.objects.get(is_default=True)
    ObjectCopy.objects.update(verified_at=None)
    size = sum(ObjectCopy.objects.filter(location=default).values_list("size", flat=True))
    settings.FIXITY_CYCLE_DAYS = 0
    settings.SCRUB_MB_PER_SECOND = 1_000_000  # no limit: how fast it can read
    # Only the file system location's copies: mark the others verified now.
    from django.utils import timezone

    ObjectCopy.objects.exclude(location=default).update(verified_at=timezone.now() + timezone.timedelta(days=1))
    started = time.perf_counter()
    done = scrub_copies(max_seconds=600)
    elapsed = time.perf_counter() - started
    print(f"scrub_copies={done}")
    print(f"scrub_mb_per_second={size / elapsed / 1e6:.0f}")
    runs["scrub"] = {"copies": done, "bytes": size, "seconds": elapsed}

    alone = ingest(make_series(SCRATCH / "in" / "s1", slices, 101), institution)
    settings.SCRUB_MB_PER_SECOND = 50.0  # the default rate limit
    # As deployed: the scrubber runs in a Celery worker, another process than the DICOM service's ingest.
    # With a fixity cycle of 0 days every copy is always due, so it never runs out of work.
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("fork")
    stop = context.Event()

    def scrubber() -> None:
        close_old_connections()
        while not stop.is_set():
            scrub_copies(max_seconds=2)

    process = context.Process(target=scrubber)
    process.start()
    try:
        beside = ingest(make_series(SCRATCH / "in" / "s2", slices, 102), institution)
    finally:
        stop.set()
        process.join(timeout=30)
    print(f"scrub_ingest_alone_per_second={alone:.0f}")
    print(f"scrub_ingest_beside_scrubber_per_second={beside:.0f}")
    print(f"scrub_ingest_ratio={beside / alone:.2f}")
    runs["scrub_ingest"] = {"alone": alone, "beside": beside}


def bench_recall(institution, slices: int, runs: dict) -> None:
    from archive.copies import locations
    from archive.copies.lifecycle import do_recall_study, do_transition_study
    from archive.models import Instance, StorageLocation, Study
    from viewer import caches
    from viewer.render import RenderParams, render_frame

    nearline = StorageLocation.objects.create(
        name="nearline", kind="filesystem", path=str(SCRATCH / "nearline"), site="site-a", tier="nearline"
    )
    locations.forget()
    times = []
    for attempt in range(3):
        ingest(make_series(SCRATCH / "in" / f"c{attempt}", slices, 200 + attempt), institution)
        study = Study.objects.order_by("-received_at").first()
        assert study is not None
        do_transition_study(study, nearline)
        caches.decoded_cache().clear()
        first = Instance.objects.filter(series__study=study).order_by("instance_number").first()
        assert first is not None
        started = time.perf_counter()
        recall = threading.Thread(target=do_recall_study, args=(study.pk,))
        recall.start()  # what a read starts (a Celery task in the product)
        image = render_frame(first, 1, RenderParams())
        times.append(time.perf_counter() - started)
        recall.join()
        assert image[:2] == b"\xff\xd8"
    runs["recall_first_image_seconds"] = times
    print(f"recall_first_image_p50_ms={pct(times, 50) * 1000:.0f}")
    print(f"recall_first_image_max_ms={max(times) * 1000:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--only", default="replication,scrub,recall")
    args = parser.parse_args()
    url = setup_django()
    from pacs_cloud.models import Institution

    institution = Institution.objects.create(slug="bench", name="Bench Hospital", time_zone="Asia/Shanghai")
    run = Run(database=url)
    runs: dict = {}
    only = set(args.only.split(","))
    with Figures() as figures:
        if "replication" in only:
            bench_replication(institution, args.series, args.slices, runs)
        if "scrub" in only:
            bench_scrub(institution, args.slices, runs)
        if "recall" in only:
            bench_recall(institution, args.slices, runs)
    # A run of some of the three keeps its own file beside the full run's.
    name = (
        "archive_copies" if only >= {"replication", "scrub", "recall"} else "archive_copies_" + "_".join(sorted(only))
    )
    run.write(name, {"figures": figures.values, "runs": runs})


if __name__ == "__main__":
    main()
