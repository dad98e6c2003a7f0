#!/usr/bin/env python3
"""Archive benchmark: Cloud PACS beside Orthanc, on this machine, in the same run.

Measures (each line of output is ``key=value``; a JSON summary goes to
``$BENCH_HOME/results/``):

* C-STORE ingest: dcmtk ``storescu`` sends a 300-slice 512x512 CT series over
  one association (TCP_NODELAY on both ends) to Orthanc and to our DICOM
  service, alternately, several runs; instances/s and the ratio ours/Orthanc
  per run (median reported). Every run's series has fresh UIDs.
* The same with two associations at once, each sending a series of its own.
* STOW-RS ingest: one multipart/related POST of 100 CT slices to each.

The ingest figures (machine, load, versions, every run of both servers and
the ratios) are also written to ``bench/results/archive_ingest.json``, which
is committed and quoted in the README.
* QIDO-RS study search on PostgreSQL over 10,000 studies / 1,000,000
  instances (bulk-loaded into the index with COPY): p50/p95 per kind of
  the searches a worklist makes (patient ID, name wildcards, date range and
  modality, accession number, default list, fuzzy name), from one client
  and from 10 at once; also written to ``bench/results/archive_qido.json``
  (``--only qido`` runs just this part).
* WADO-RS series retrieval (multipart/related, as stored): MB/s, both servers.

Usage (PostgreSQL needed; Orthanc, orthanc-dicomweb and dcmtk installed):

    BENCH_HOME=/tmp/bench-me ORTHANC_HTTP_PORT=18042 ORTHANC_DICOM_PORT=14242 \\
        .venv/bin/python bench/archive_bench.py --database postgres://postgres@127.0.0.1:5432/pacs_bench

The database is dropped and re-created. Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CT = "1.2.840.10008.5.1.4.1.1.2"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def out(key: str, value: object) -> None:
    if isinstance(value, float):
        value = f"{value:.3f}"
    print(f"{key}={value}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of the processes it forked (the DICOM service's
    processes), their ended threads included (/proc/<pid>/stat)."""
    total, parents = 0, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    todo = [pid]
    while todo:
        current = todo.pop()
        total += parents.get(current, (0, 0))[1]
        todo.extend(child for child, (parent, _) in parents.items() if parent == current)
    return total / os.sysconf("SC_CLK_TCK")


# A synthetic CT series ------------------------------------------------------------


def make_series(folder: Path, slices: int, seed: int) -> dict:
    """A CT series: 512x512 signed 16-bit slices of a noisy body phantom, Explicit VR Little Endian."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[-256:256, -256:256]
    body = (xx / 200.0) ** 2 + (yy / 150.0) ** 2 <= 1
    lungs = ((np.abs(xx) - 80) / 55.0) ** 2 + (yy / 90.0) ** 2 <= 1
    uids = []
    for index in range(slices):
        image = np.full((512, 512), -1000, dtype=np.int16)
        image[body] = 40
        image[lungs & body] = -850
        image += rng.normal(0, 12, size=image.shape).astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CT, sop
        ds.StudyDate, ds.StudyTime = dt.datetime.now(dt.UTC).strftime("%Y%m%d"), "101500"
        ds.AccessionNumber = f"BA{seed:06d}"
        ds.Modality, ds.Manufacturer = "CT", "Bench"
        ds.ReferringPhysicianName = "REFERRER^ROBERT"
        ds.StudyDescription, ds.SeriesDescription = "CT CHEST W CONTRAST", "AXIAL 1MM"
        ds.PatientName, ds.PatientID = f"BENCH^RUN{seed}", f"BENCH{seed:05d}"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.SliceThickness = 1.0
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, index + 1
        ds.ImagePositionPatient = [-250.0, -250.0, float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = image.tobytes()
        ds.save_as(folder / f"CT{index:04d}.dcm", enforce_file_format=True)
        uids.append(sop)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"study": study, "series": series, "instances": uids, "bytes": size, "folder": folder}


# The two servers ------------------------------------------------------------------


class Orthanc:
    """A throw-away Orthanc (Debian package, as shipped, with TCP_NODELAY=1 for its DCMTK)."""

    def __init__(self, home: Path, http_port: int, dicom_port: int) -> None:
        self.dir = home / "orthanc"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "db").mkdir(parents=True)
        self.url = f"http://127.0.0.1:{http_port}"
        self.dicom_port = dicom_port
        plugins = [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")]
        config = {
            "Name": "OrthancBench",
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "Plugins": plugins,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {"BENCHSCU": ["BENCHSCU", "127.0.0.1", 11114]},
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{http_port}", "Ssl": False},
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config, indent=1))
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.process = subprocess.Popen(
            ["Orthanc", f"--logfile={self.dir / 'orthanc.log'}", str(self.dir / "orthanc.json")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"{self.url}/system", self.process)

    def stored(self, study_uid: str) -> int:
        found = requests.post(f"{self.url}/tools/lookup", data=study_uid, timeout=30).json()
        for item in found:
            if item["Type"] == "Study":
                return len(requests.get(f"{self.url}/studies/{item['ID']}/instances", timeout=30).json())
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


# The harness's own calling AE, a DICOM node of Riverside in the bench database
# only (the demo registers hospital modalities, not test tools).
BENCH_AE = "BENCHSCU"
REGISTER_BENCH_NODE = f"""
from archive.actions import do_save_dicom_node
from archive.models import DicomNode
from pacs_cloud.models import Institution

do_save_dicom_node(
    institution=Institution.objects.get(slug="riverside"),
    acting_user=None,
    node=DicomNode.objects.filter(ae_title="{BENCH_AE}").first(),
    ae_title="{BENCH_AE}",
    host="127.0.0.1",
    description="Benchmark harness",
)
"""


class Ours:
    """Cloud PACS: the ASGI web server and the DICOM service, on a PostgreSQL database of their own."""

    def __init__(self, home: Path, database: str, http_port: int, dicom_port: int) -> None:
        self.home = home / "ours"
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        self.url = f"http://127.0.0.1:{http_port}"
        self.dicom_port = dicom_port
        self.env = {
            **os.environ,
            "DATABASE_URL": database,
            "PACS_DATA_DIR": str(self.home),
            "CLOUD_URL": self.url,
            "TCP_NODELAY": "1",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "pacs_cloud.settings",
        }
        self.env.pop("STORAGE_URL", None)
        manage = [PYTHON, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=self.env, check=True, cwd=ROOT)
        subprocess.run([*manage, "seed_demo"], env=self.env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        subprocess.run([*manage, "shell", "-c", REGISTER_BENCH_NODE], env=self.env, check=True, cwd=ROOT)
        self.web = subprocess.Popen(
            [PYTHON, "-m", "uvicorn", "pacs_cloud.asgi:application", "--host", "127.0.0.1", "--port",
             str(http_port), "--no-access-log", "--log-level", "warning"],
            env=self.env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        self.dicom = subprocess.Popen(
            [*manage, "dicom_server", "--port", str(dicom_port)], env=self.env, cwd=ROOT, start_new_session=True
        )
        wait_http(f"{self.url}/healthz", self.web, ok=(200, 503))
        answer = requests.post(
            f"{self.url}/api/v1/auth/token/",
            json={"username": "tech@riverside", "password": "demo-password", "name": "bench"},
            timeout=30,
        )
        answer.raise_for_status()
        self.headers = {"Authorization": f"Bearer {answer.json()['token']}"}
        wait_port(dicom_port, self.dicom)

    def stored(self, study_uid: str) -> int:
        found = requests.get(
            f"{self.url}/dicomweb/studies",
            params={"StudyInstanceUID": study_uid},
            headers={**self.headers, "Accept": "application/dicom+json"},
            timeout=30,
        ).json()
        return int(found[0]["00201208"]["Value"][0]) if found else 0

    def stop(self) -> None:
        for process in (self.dicom, self.web):
            process.send_signal(signal.SIGTERM)
        for process in (self.dicom, self.web):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_http(url: str, process: subprocess.Popen, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code in ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wait_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"DICOM service exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open")


# C-STORE --------------------------------------------------------------------------------


def storescu(port: int, called: str, folder: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        ["storescu", "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port), "+sd", "+sp", "*.dcm", str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-500:]}")
    return elapsed


def bench_cstore(orthanc: Orthanc, ours: Ours, home: Path, runs: int, slices: int) -> dict:
    out("cstore.method", f"dcmtk storescu, one association, {slices}-slice 512x512 CT (Explicit VR LE), fresh UIDs "
        f"per run, Orthanc and ours alternately, {runs} runs; wall time of storescu; TCP_NODELAY=1 on every end")  # fmt: skip
    rows = []
    for run in range(runs):
        series = make_series(home / "series" / f"run{run}", slices, seed=1000 + run)
        order = [("orthanc", orthanc), ("ours", ours)] if run % 2 == 0 else [("ours", ours), ("orthanc", orthanc)]
        row: dict = {"instances": slices, "bytes": series["bytes"]}
        for name, server in order:
            pid = server.process.pid if name == "orthanc" else server.dicom.pid
            cpu = cpu_seconds(pid)
            called = "ORTHANC" if name == "orthanc" else "PACSCLOUD"
            seconds = storescu(server.dicom_port, called, series["folder"])
            row[f"{name}_cpu_s"] = cpu_seconds(pid) - cpu
            time.sleep(0.3)
            row[f"{name}_s"] = seconds
            row[f"{name}_ips"] = slices / seconds
            row[f"{name}_stored"] = server.stored(series["study"])
        row["ratio"] = row["ours_ips"] / row["orthanc_ips"]
        for key, value in row.items():
            out(f"cstore.run{run + 1}.{key}", value)
        rows.append(row)
        if run == runs - 1:
            ours.last_series = series  # type: ignore[attr-defined]
            orthanc.last_series = series  # type: ignore[attr-defined]
    summary = {
        "ours_ips": statistics.median(r["ours_ips"] for r in rows),
        "orthanc_ips": statistics.median(r["orthanc_ips"] for r in rows),
        "ratio": statistics.median(r["ratio"] for r in rows),
        "ours_cpu_ms_per_instance": statistics.median(r["ours_cpu_s"] for r in rows) / slices * 1000,
        "orthanc_cpu_ms_per_instance": statistics.median(r["orthanc_cpu_s"] for r in rows) / slices * 1000,
    }
    for key, value in summary.items():
        out(f"cstore.median.{key}", value)
    return {**summary, "runs": rows}


def start_storescu(port: int, called: str, folder: Path) -> subprocess.Popen:
    command = ["storescu", "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port), "+sd", "+sp", "*.dcm"]
    return subprocess.Popen(
        [*command, str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def bench_cstore_parallel(orthanc: Orthanc, ours: Ours, home: Path, runs: int, slices: int) -> dict:
    """Two storescu associations at once, each sending its own series (a CT and a second series)."""
    out("cstore2.method", f"two dcmtk storescu associations at once, each a {slices}-slice 512x512 CT series of its "
        f"own (fresh UIDs per run), Orthanc and ours alternately, {runs} runs; instances/s = {2 * slices} / wall time "
        "until both storescu have finished")  # fmt: skip
    rows = []
    for run in range(runs):
        pair = [make_series(home / "series2" / f"run{run}-{k}", slices, seed=3000 + 2 * run + k) for k in (0, 1)]
        order = [("orthanc", orthanc), ("ours", ours)] if run % 2 == 0 else [("ours", ours), ("orthanc", orthanc)]
        row: dict = {"instances": 2 * slices, "bytes": sum(s["bytes"] for s in pair)}
        for name, server in order:
            pid = server.process.pid if name == "orthanc" else server.dicom.pid
            cpu = cpu_seconds(pid)
            called = "ORTHANC" if name == "orthanc" else "PACSCLOUD"
            started = time.perf_counter()
            senders = [start_storescu(server.dicom_port, called, series["folder"]) for series in pair]
            for sender in senders:
                _, error = sender.communicate()
                if sender.returncode != 0:
                    raise RuntimeError(f"storescu to {called} failed: {error[-500:]}")
            seconds = time.perf_counter() - started
            row[f"{name}_cpu_s"] = cpu_seconds(pid) - cpu
            time.sleep(0.3)
            row[f"{name}_s"] = seconds
            row[f"{name}_ips"] = 2 * slices / seconds
            row[f"{name}_stored"] = sum(server.stored(series["study"]) for series in pair)
        row["ratio"] = row["ours_ips"] / row["orthanc_ips"]
        for key, value in row.items():
            out(f"cstore2.run{run + 1}.{key}", value)
        rows.append(row)
    summary = {
        "ours_ips": statistics.median(r["ours_ips"] for r in rows),
        "orthanc_ips": statistics.median(r["orthanc_ips"] for r in rows),
        "ratio": statistics.median(r["ratio"] for r in rows),
    }
    for key, value in summary.items():
        out(f"cstore2.median.{key}", value)
    return {**summary, "runs": rows}


# STOW-RS ---------------------------------------------------------------------------------


def multipart_body(folder: Path, boundary: str) -> bytes:
    parts = []
    for path in sorted(folder.glob("*.dcm")):
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def bench_stow(orthanc: Orthanc, ours: Ours, home: Path, runs: int, count: int) -> dict:
    out("stow.method", f"one STOW-RS POST (multipart/related, application/dicom) of {count} 512x512 CT slices, "
        f"{runs} runs alternately, instances/s from the request's wall time")  # fmt: skip
    results: dict[str, list[float]] = {"ours": [], "orthanc": []}
    rows = []
    for run in range(runs):
        series = make_series(home / "stow" / f"run{run}", count, seed=2000 + run)
        boundary = uuid.uuid4().hex
        body = multipart_body(series["folder"], boundary)
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        for name in ("orthanc", "ours") if run % 2 == 0 else ("ours", "orthanc"):
            url = f"{orthanc.url}/dicom-web/studies" if name == "orthanc" else f"{ours.url}/dicomweb/studies"
            headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
            if name == "ours":
                headers.update(ours.headers)
            started = time.perf_counter()
            answer = requests.post(url, data=body, headers=headers, timeout=600)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"STOW to {name} answered {answer.status_code}: {answer.text[:300]}")
            results[name].append(count / elapsed)
            out(f"stow.run{run + 1}.{name}_ips", count / elapsed)
        rows.append({"instances": count, "ours_ips": results["ours"][-1], "orthanc_ips": results["orthanc"][-1],
                     "ratio": results["ours"][-1] / results["orthanc"][-1]})  # fmt: skip
    summary: dict = {
        "ours_ips": statistics.median(results["ours"]),
        "orthanc_ips": statistics.median(results["orthanc"]),
    }
    summary["ratio"] = summary["ours_ips"] / summary["orthanc_ips"]
    summary["ratio_median_of_runs"] = statistics.median(r["ratio"] for r in rows)
    for key, value in summary.items():
        out(f"stow.median.{key}", value)
    return {**summary, "runs": rows}


# WADO-RS ---------------------------------------------------------------------------------


def fetch(url: str, headers: dict) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    with requests.get(url, headers=headers, stream=True, timeout=600) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(chunk_size=1024 * 1024):
            total += len(chunk)
    return total, time.perf_counter() - started


def bench_wado(orthanc: Orthanc, ours: Ours, runs: int) -> dict:
    series = ours.last_series  # type: ignore[attr-defined]
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    out("wado.method", f"WADO-RS series retrieval of the last {len(series['instances'])}-slice CT series "
        f"(Accept: {accept}; Accept-Encoding: identity), streamed and counted, {runs} runs each, MB/s = 10^6 bytes/s")  # fmt: skip
    results: dict[str, list[float]] = {"ours": [], "orthanc": []}
    path = f"/studies/{series['study']}/series/{series['series']}"
    for run in range(runs):
        for name in ("orthanc", "ours") if run % 2 == 0 else ("ours", "orthanc"):
            headers = {"Accept": accept, "Accept-Encoding": "identity"}
            if name == "ours":
                headers.update(ours.headers)
                url = f"{ours.url}/dicomweb{path}"
            else:
                url = f"{orthanc.url}/dicom-web{path}"
            size, seconds = fetch(url, headers)
            results[name].append(size / 1e6 / seconds)
            out(f"wado.run{run + 1}.{name}_MBps", size / 1e6 / seconds)
            out(f"wado.run{run + 1}.{name}_bytes", size)
    summary = {"ours_MBps": statistics.median(results["ours"]), "orthanc_MBps": statistics.median(results["orthanc"])}
    summary["ratio"] = summary["ours_MBps"] / summary["orthanc_MBps"]
    for key, value in summary.items():
        out(f"wado.median.{key}", value)
    return summary


# QIDO-RS over a large index ------------------------------------------------------------

SURNAMES = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU", "SMITH", "GARCIA", "MULLER"]
GIVEN = ["WEI", "FANG", "NA", "MIN", "JING", "LEI", "YANG", "JUN", "ANNA", "MARIA", "JOHN", "HANS", "XIAODONG"]
IDEOGRAPHIC = {"WANG": "王", "LI": "李", "ZHANG": "张", "LIU": "刘", "CHEN": "陈", "YANG": "杨", "HUANG": "黄",
               "ZHAO": "赵", "WU": "吴", "ZHOU": "周"}  # fmt: skip
MODALITIES = ["CT", "MR", "CR", "US", "DX", "MG"]


def copy_rows(cursor, table: str, columns: list[str], rows) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join(_copy_value(v) for v in row) + "\n")
    buffer.seek(0)
    cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def _copy_value(value: object) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def populate(database: str, studies: int, instances_per_study: int, institution_slug: str = "riverside") -> dict:
    """Bulk-load the index: ``studies`` studies of as many patients, 3 series each, COPY, no ORM."""
    import psycopg2

    sys.path.insert(0, str(ROOT))
    from archive.names import name_forms

    random.seed(7)
    connection = psycopg2.connect(database)
    connection.autocommit = False
    cursor = connection.cursor()
    cursor.execute("SELECT id FROM pacs_cloud_institution WHERE slug = %s", [institution_slug])
    institution = cursor.fetchone()[0]
    now = dt.datetime.now(dt.UTC).isoformat()
    started = time.perf_counter()
    patient_rows, study_rows, series_rows = [], [], []
    series_ids: list[tuple[str, str, int]] = []
    for index in range(studies):
        surname, given = random.choice(SURNAMES), random.choice(GIVEN)
        pn = f"{surname}^{given}" + (
            f"={IDEOGRAPHIC[surname]}^{given.title()}" if surname in IDEOGRAPHIC and index % 3 == 0 else ""
        )
        forms = name_forms(pn)
        patient = str(uuid.uuid4())
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=random.randrange(30000))
        patient_rows.append((patient, institution, f"QP{index:06d}", "RIVERSIDE", forms.full, forms.alphabetic,
                             forms.ideographic, forms.phonetic, forms.words, birth, random.choice("MF"), "[]", now, now))  # fmt: skip
        study = str(uuid.uuid4())
        day = dt.date(2020, 1, 1) + dt.timedelta(days=random.randrange(5 * 365))
        modality = MODALITIES[index % len(MODALITIES)]
        study_rows.append((study, institution, patient, f"2.25.{uuid.uuid4().int}", day, "10:15:00", f"QA{index:07d}",
                           "1", f"{modality} EXAMINATION", "REFERRER^ROBERT", "REFERRER^ROBERT", modality, 3,
                           instances_per_study, instances_per_study * 500_000, "reported", now, now, None, "{}", "{}",
                           0, 0))  # fmt: skip
        for number in range(3):
            series = str(uuid.uuid4())
            per_series = instances_per_study // 3 + (1 if number < instances_per_study % 3 else 0)
            series_rows.append((series, study, f"2.25.{uuid.uuid4().int}", modality, number + 1, "AXIAL", "CHEST",
                                None, None, "", "", per_series, per_series * 500_000, now))  # fmt: skip
            series_ids.append((series, study, per_series))
    copy_rows(cursor, "archive_patient",
              ["id", "institution_id", "patient_id", "issuer", "name", "name_search", "name_ideographic",
               "name_phonetic", "name_words", "birth_date", "sex", "received_forms", "created_at", "updated_at"],
              patient_rows)  # fmt: skip
    copy_rows(cursor, "archive_study",
              ["id", "institution_id", "patient_id", "study_instance_uid", "study_date", "study_time",
               "accession_number", "study_id", "description", "referring_physician", "referring_physician_search",
               "modalities", "num_series", "num_instances", "size_bytes", "state", "received_at",
               "last_instance_at", "completed_at", "received_patient", "header_overrides", "non_image_series",
               "non_image_instances"], study_rows)  # fmt: skip
    copy_rows(cursor, "archive_series",
              ["id", "study_id", "series_instance_uid", "modality", "series_number", "description", "body_part",
               "performed_start_date", "performed_start_time", "scheduled_procedure_step_id",
               "requested_procedure_id", "num_instances", "size_bytes", "created_at"], series_rows)  # fmt: skip
    columns = ["id", "institution_id", "series_id", "sop_instance_uid", "sop_class_uid", "instance_number",
               "transfer_syntax_uid", "rows", "columns", "bits_allocated", "number_of_frames", "size", "sha256",
               "storage_key", "location", "pixel_data_offset", "pixel_data_length", "metadata", "received_at"]  # fmt: skip
    metadata = json.dumps({"00080016": {"vr": "UI", "Value": [CT]}, "00080060": {"vr": "CS", "Value": ["CT"]},
                           "00280010": {"vr": "US", "Value": [512]}, "00280011": {"vr": "US", "Value": [512]},
                           "00280100": {"vr": "US", "Value": [16]}, "00181050": {"vr": "DS", "Value": [1.0]},
                           "00200032": {"vr": "DS", "Value": [-250.0, -250.0, 0.0]},
                           "7FE00010": {"vr": "OW", "BulkDataURI": ""}})  # fmt: skip
    batch = []
    total = 0
    for series, _study, count in series_ids:
        for number in range(count):
            sop = f"2.25.{uuid.uuid4().int}"
            batch.append((str(uuid.uuid4()), institution, series, sop, CT, number + 1, ExplicitVRLittleEndian, 512,
                          512, 16, 1, 525_000, "0" * 64, f"{institution}/bench/{sop}.dcm", "stored", 1500, 524_288,
                          metadata, now))  # fmt: skip
        if len(batch) >= 100_000:
            copy_rows(cursor, "archive_instance", columns, batch)
            total += len(batch)
            batch = []
    if batch:
        copy_rows(cursor, "archive_instance", columns, batch)
        total += len(batch)
    connection.commit()
    connection.autocommit = True
    cursor.execute("VACUUM ANALYZE archive_patient")
    cursor.execute("VACUUM ANALYZE archive_study")
    cursor.execute("VACUUM ANALYZE archive_series")
    cursor.execute("VACUUM ANALYZE archive_instance")
    cursor.execute("SELECT count(*) FROM archive_study")
    study_count = cursor.fetchone()[0]
    cursor.execute("SELECT count(*) FROM archive_instance")
    instance_count = cursor.fetchone()[0]
    connection.close()
    return {"studies": study_count, "instances": instance_count, "seconds": time.perf_counter() - started}


QUERIES = [
    ("patient_id", lambda i: {"PatientID": f"QP{(i * 7919) % 10000:06d}"}),
    ("name_wildcard", lambda i: {"PatientName": f"{SURNAMES[i % len(SURNAMES)]}^{GIVEN[i % len(GIVEN)][:2]}*"}),
    ("ideographic_wildcard", lambda i: {"PatientName": f"{list(IDEOGRAPHIC.values())[i % 10]}*", "limit": "50"}),
    (
        "date_range_modality",
        lambda i: {
            "StudyDate": f"2023{(i % 12) + 1:02d}01-2023{(i % 12) + 1:02d}28",
            "ModalitiesInStudy": MODALITIES[i % len(MODALITIES)],
        },
    ),  # fmt: skip
    ("accession", lambda i: {"AccessionNumber": f"QA{(i * 104729) % 10000:07d}"}),
    ("recent_list", lambda i: {"limit": "25", "offset": str((i % 4) * 25)}),
    ("fuzzy_name", lambda i: {"PatientName": GIVEN[i % len(GIVEN)].lower(), "fuzzymatching": "true", "limit": "25"}),
]


def _qido_round(session: requests.Session, url: str, index: int, phase: str, runs: list[dict]) -> None:
    """One request of each kind, in order, timed from send to the last byte of the answer."""
    for name, params in QUERIES:
        started = time.perf_counter()
        answer = session.get(f"{url}/dicomweb/studies", params=params(index), timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        answer.raise_for_status()
        runs.append({"phase": phase, "kind": name, "ms": round(elapsed, 3), "results": len(answer.json())})


def _qido_summary(runs: list[dict], phase: str) -> dict:
    mine = [r for r in runs if r["phase"] == phase]
    summary: dict = {}
    for name, _ in QUERIES:
        values = [r["ms"] for r in mine if r["kind"] == name]
        summary[name] = {
            "n": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "results_median": statistics.median(r["results"] for r in mine if r["kind"] == name),
        }
    everything = [r["ms"] for r in mine]
    summary["all"] = {"n": len(everything), "p50_ms": percentile(everything, 50), "p95_ms": percentile(everything, 95)}
    summary["worst_kind_p95_ms"] = max(summary[name]["p95_ms"] for name, _ in QUERIES)
    return summary


def bench_qido(ours: Ours, repeats: int, clients: int, concurrent_rounds: int) -> dict:
    """Each kind ``repeats`` times from one client, then ``clients`` clients at once.

    Also the web server's CPU per request in the serial phase (its own work,
    whatever else loads the machine).
    """
    out("qido.method", f"QIDO-RS GET /dicomweb/studies (Accept application/dicom+json, bearer token, keep-alive), "
        f"{len(QUERIES)} kinds of search round-robin: {repeats} rounds from one client, then {clients} clients "
        f"at once ({concurrent_rounds} rounds each); p50/p95 of the full response time per kind; each search "
        "audited; index on PostgreSQL, bulk-loaded")  # fmt: skip
    headers = {**ours.headers, "Accept": "application/dicom+json"}
    session = requests.Session()
    session.headers.update(headers)
    for _ in range(20):  # warm up connections and caches
        session.get(f"{ours.url}/dicomweb/studies", params={"limit": "10"}, timeout=30)
    runs: list[dict] = []
    cpu = cpu_seconds(ours.web.pid)
    started = time.perf_counter()
    for index in range(repeats):
        _qido_round(session, ours.url, index, "serial", runs)
    serial_requests = repeats * len(QUERIES)
    web_cpu_ms = (cpu_seconds(ours.web.pid) - cpu) / serial_requests * 1000
    serial_rate = serial_requests / (time.perf_counter() - started)

    def client(number: int) -> None:
        own = requests.Session()
        own.headers.update(headers)
        own.get(f"{ours.url}/dicomweb/studies", params={"limit": "10"}, timeout=30)
        for index in range(concurrent_rounds):
            _qido_round(own, ours.url, 1000 * (number + 1) + index, "concurrent", runs)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent_rate = clients * concurrent_rounds * len(QUERIES) / (time.perf_counter() - started)
    summary = {
        "serial": _qido_summary(runs, "serial"),
        "concurrent": {"clients": clients, **_qido_summary(runs, "concurrent")},
        "serial_requests_per_s": serial_rate,
        "concurrent_requests_per_s": concurrent_rate,
        "web_cpu_ms_per_request": web_cpu_ms,
        "runs": runs,
    }
    for phase in ("serial", "concurrent"):
        for name, _ in QUERIES:
            for key in ("p50_ms", "p95_ms", "results_median"):
                out(f"qido.{phase}.{name}.{key}", summary[phase][name][key])
        for key in ("p50_ms", "p95_ms", "n"):
            out(f"qido.{phase}.all.{key}", summary[phase]["all"][key])
    out("qido.serial_requests_per_s", serial_rate)
    out("qido.concurrent_requests_per_s", concurrent_rate)
    out("qido.web_cpu_ms_per_request", web_cpu_ms)
    return summary


def ingest_machine() -> dict:
    """What the ingest figures were measured on: CPU, memory, kernel, load, and the software on both sides."""
    import platform

    import pydicom
    import pynetdicom

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text().split() if Path("/proc/meminfo").exists() else []
    orthanc = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout.splitlines()
    storescu = subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout.splitlines()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_kB": int(meminfo[1]) if len(meminfo) > 1 else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "orthanc": orthanc[0] if orthanc else "?",
        "dcmtk": next((line for line in storescu if "dcmtk" in line.lower()), "?"),
        "commit": commit.strip(),
    }


def postgres_version(url: str) -> str:
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
            cursor.execute("SHOW synchronous_commit")
            return f"{version} (synchronous_commit={cursor.fetchone()[0]})"
    finally:
        connection.close()


def versions(database: str) -> dict:
    import django
    import psycopg2

    with psycopg2.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"python": sys.version.split()[0], "django": django.get_version(), "postgresql": postgres,
            "psycopg2": psycopg2.__version__.split()[0], "uvicorn": _version("uvicorn"), "orjson": _version("orjson"),
            "commit": git}  # fmt: skip


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")  # fmt: skip
    memory = next(line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))  # fmt: skip
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory": memory, "kernel": os.uname().release}


def write_qido_results(target: Path, loaded: dict, summary: dict, args: argparse.Namespace, database: str,
                       load_start: tuple[float, ...]) -> None:  # fmt: skip
    """The QIDO figures as committed in the repository (README, performance table)."""
    serial, concurrent = summary["serial"], summary["concurrent"]
    document = {
        "benchmark": "QIDO-RS study search at 10,000 studies / 1,000,000 instances (bench/archive_bench.py --only qido)",
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "versions": versions(database),
        "settings": {
            "repeats": args.qido_repeats,
            "clients": args.qido_clients,
            "concurrent_rounds": args.qido_concurrent_rounds,
            "web_workers": 1,
        },  # fmt: skip
        "index": loaded,
        "targets": {"serial_p95_ms": 10, "concurrent_p95_ms": 25},
        "met": {
            "serial": serial["worst_kind_p95_ms"] < 10,
            "concurrent": concurrent["worst_kind_p95_ms"] < 25,
        },
        **{key: value for key, value in summary.items() if key != "runs"},
        "runs_columns": ["phase", "kind", "ms", "results"],
        "runs": [[run["phase"], run["kind"], run["ms"], run["results"]] for run in summary["runs"]],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1, default=str)
    # One line per request, not five.
    text = re.sub(r"\[\n\s+(\"\w+\"),\n\s+(\"\w+\"),\n\s+([\d.]+),\n\s+(\d+)\n\s+\]", r"[\1, \2, \3, \4]", text)
    target.write_text(text + "\n")
    out("qido.results_file", target)


def recreate_database(url: str) -> None:
    import psycopg2

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = psycopg2.connect(url.replace(parsed.path, "/postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=os.environ.get("BENCH_DATABASE_URL",
                        "postgres://postgres@127.0.0.1:5432/pacs_archive_bench"))  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="C-STORE runs (each server)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--stow-runs", type=int, default=3)
    parser.add_argument("--stow-count", type=int, default=100)
    parser.add_argument("--wado-runs", type=int, default=3)
    parser.add_argument("--qido-studies", type=int, default=10_000)
    parser.add_argument("--qido-instances-per-study", type=int, default=100)
    parser.add_argument("--qido-repeats", type=int, default=60, help="rounds of the 7 searches from one client")
    parser.add_argument("--qido-clients", type=int, default=10, help="clients searching at once")
    parser.add_argument("--qido-concurrent-rounds", type=int, default=20, help="rounds of the 7 searches per client")
    parser.add_argument("--parallel-runs", type=int, default=3, help="runs of two C-STORE associations at once")
    parser.add_argument("--only", default="", help="comma-separated subset of cstore,cstore2,stow,wado,qido")
    args = parser.parse_args()
    home = Path(os.environ.get("BENCH_HOME", ROOT / "bench" / "data")).resolve()
    (home / "results").mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else {"cstore", "cstore2", "stow", "wado", "qido"}
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ingest_load_start = os.getloadavg()
    out("date_utc", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out("host.cpus", os.cpu_count())
    out("host.loadavg_start", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    version = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout.splitlines()
    out("orthanc.version", version[0] if version else "?")
    recreate_database(args.database)
    orthanc = Orthanc(home, int(os.environ.get("ORTHANC_HTTP_PORT", free_port())),
                      int(os.environ.get("ORTHANC_DICOM_PORT", free_port())))  # fmt: skip
    ours = None
    summary: dict = {}
    try:
        ours = Ours(home, args.database, free_port(), free_port())
        if "qido" in wanted:
            loaded = populate(args.database, args.qido_studies, args.qido_instances_per_study)
            for key, value in loaded.items():
                out(f"qido.load.{key}", value)
            summary["qido_load"] = loaded
        if {"cstore", "wado"} & wanted:
            summary["cstore"] = bench_cstore(orthanc, ours, home, args.runs if "cstore" in wanted else 1, args.slices)
        if "cstore2" in wanted:
            summary["cstore2"] = bench_cstore_parallel(orthanc, ours, home, args.parallel_runs, args.slices)
        if "stow" in wanted:
            summary["stow"] = bench_stow(orthanc, ours, home, args.stow_runs, args.stow_count)
        if "wado" in wanted:
            summary["wado"] = bench_wado(orthanc, ours, args.wado_runs)
        if "qido" in wanted:
            load_start = os.getloadavg()
            summary["qido"] = bench_qido(ours, args.qido_repeats, args.qido_clients, args.qido_concurrent_rounds)
            write_qido_results(ROOT / "bench" / "results" / "archive_qido.json", summary["qido_load"],
                               summary["qido"], args, args.database, load_start)  # fmt: skip
    finally:
        out("host.loadavg_end", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        if ours is not None:
            ours.stop()
        orthanc.stop()
    target = home / "results" / f"archive-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    target.write_text(json.dumps(summary, indent=1, default=str))
    out("results_file", target)
    if {"cstore", "cstore2", "stow"} & summary.keys():
        write_ingest_results(args, started_at, ingest_load_start, summary)


def write_ingest_results(args: argparse.Namespace, started_at: str, load_start: tuple, summary: dict) -> None:
    """The ingest figures, committed with the code: ``bench/results/archive_ingest.json``."""
    document = {
        "benchmark": "archive ingest (C-STORE, two associations at once, STOW-RS) beside Orthanc, same run",
        "command": "bench/archive_bench.py " + " ".join(sys.argv[1:]),
        "started_utc": started_at,
        "finished_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": ingest_machine(),
        "postgresql": postgres_version(args.database),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "targets": {"cstore": 1.2, "cstore2": 1.2, "stow": 1.2},
        **{key: summary[key] for key in ("cstore", "cstore2", "stow") if key in summary},
    }
    target = ROOT / "bench" / "results" / "archive_ingest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=1, default=str) + "\n")
    out("ingest_results_file", target)


if __name__ == "__main__":
    main()
