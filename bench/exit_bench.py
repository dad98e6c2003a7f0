#!/usr/bin/env python
"""Benchmark of an institution's exit export: throughput from file system storage.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_exit_bench \
        .venv/bin/python bench/exit_bench.py [--series 2] [--slices 150] [--runs 3]

One hospital with ``--series`` 512×512 CT series of ``--slices`` slices each
(about 0.5 MB an instance, Chinese patient name), ingested through
``store_instance`` into file system storage; then ``--runs`` complete exports
(``do_run_export``: DICOMDIR from every header, every object copied and
hashed into the uncompressed tar, manifest, audit trail, configuration),
each timed from start to the finished job. Throughput is the archived bytes
over that time (MB/s, 10^6 bytes). Figures, machine, load and versions go to
``bench/results/exit.json``. The database is emptied and migrated first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Run  # noqa: E402
from scratch import scratch_django  # noqa: E402

SCRATCH = Path(tempfile.gettempdir()) / "pacs-exit-bench"


def setup_django() -> str:
    return scratch_django(SCRATCH, database="pacs_exit_bench", objects="objects")


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
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = f"EXIT{seed}", "张三", "19700101", "M"
        ds.StudyDate, ds.StudyTime, ds.Modality, ds.AccessionNumber = "20240301", "101500", "CT", f"X{seed}"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, number
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = rng.integers(-1000, 1000, size=(512, 512), dtype=np.int16).tobytes()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    database = setup_django()
    run = Run(database=database)

    from archive.ingest import store_instance
    from archive.models import Instance
    from pacs_cloud.models import Institution, Membership, Role, User
    from reports.exit import actions
    from reports.exit.export import archive_path
    from reports.exit.models import ExitJob

    hospital = Institution.objects.create(
        slug="exit-bench",
        name="Exit Bench Hospital",
        accession_prefix="XB",
        patient_id_issuer="XB",
        time_zone="Asia/Shanghai",
    )
    admin = User.objects.create(username="admin@exit-bench")
    Membership.objects.create(user=admin, institution=hospital, role=Role.INSTITUTION_ADMIN)
    for seed in range(args.series):
        for path in make_series(SCRATCH / "made" / str(seed), args.slices, seed):
            store_instance(path, institution=hospital)
    shutil.rmtree(SCRATCH / "made")
    size = sum(Instance.objects.filter(institution=hospital).values_list("size", flat=True))
    count = Instance.objects.filter(institution=hospital).count()
    runs = []
    for _ in range(args.runs):
        job = actions.do_request_export(hospital, acting_user=admin)
        started = time.perf_counter()
        cpu = time.process_time()
        state = actions.do_run_export(job.pk, job.attempt)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        job = ExitJob.objects.get(pk=job.pk)
        assert state == ExitJob.State.DONE, job.error
        runs.append(
            {
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu, 3),
                "mb_per_s": round(size / seconds / 1e6, 1),
                "archive_bytes": job.archive_size,
            }
        )
        print(f"run: {runs[-1]}", flush=True)
        archive_path(job).unlink()
    best = sorted(r["mb_per_s"] for r in runs)
    median = best[len(best) // 2]
    print(f"instances={count} bytes={size} median_mb_per_s={median}")
    path = run.write(
        "exit",
        {
            "what": "complete export of one hospital from file system storage (do_run_export, download tar)",
            "instances": count,
            "bytes": size,
            "target_mb_per_s": 100,
            "median_mb_per_s": median,
            "runs": runs,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
