"""An institution's exit: export (download and S3), re-import into Orthanc, offboarding, certificate.

The test hospital (a) has three studies, one of a patient named in Chinese
characters with a signed report in two versions; its objects also have copies
in an S3 location (a real Ceph RGW). Hospital b, with a study of its own and a
copy in the same bucket, must come through untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import requests
from django.apps import apps
from django.db import connection
from django.test import TestCase
from django_fsm import TransitionNotAllowed
from fhir.resources.R4B.bundle import Bundle
from pydicom.fileset import FileSet

from archive.copies.locations import forget, places
from archive.ingest import store_instance
from archive.models import Instance, ObjectCopy, StorageLocation, Study
from archive.storage import S3Storage
from pacs_cloud.celery import app as celery_app
from pacs_cloud.metering.models import UsageCounter
from pacs_cloud.models import AuditEvent, Institution
from reports import actions as report_actions
from reports.exit import actions
from reports.exit.export import archive_path
from reports.exit.models import ExitJob
from reports.exit.offboard import keys_under
from reports.models import Report
from tests.archive.conftest import make_ct
from tests.conftest import PASSWORD, api_client, free_port, web_client
from tests.isolation.harness import ask, client_for, discover, leaked

from .conftest import make_reading, write_and_sign

S3_URL = os.environ.get("S3_ENDPOINT_URL", "")
requires_s3 = pytest.mark.skipif(
    not S3_URL, reason="needs a real S3 server: set S3_ENDPOINT_URL (.ci/run starts a Ceph RADOS Gateway)"
)
ORTHANC = "/usr/sbin/Orthanc"


@pytest.fixture(autouse=True)
def _exports(settings, tmp_path):
    settings.EXIT_EXPORT_DIR = str(tmp_path / "exports")


@pytest.fixture
def eager():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def _store(institution, ds, folder: Path) -> Instance:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return store_instance(path, institution=institution).instance


@pytest.fixture
def bucket():
    store = S3Storage(f"exit-{uuid.uuid4().hex[:12]}", endpoint_url=S3_URL)
    yield store
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket):
        for item in page.get("Contents", []):
            store.client.delete_object(Bucket=store.bucket, Key=item["Key"])
    store.client.delete_bucket(Bucket=store.bucket)


@pytest.fixture
def hospital(tenants, tmp_path, bucket):
    """Hospital a's studies (one Chinese-named patient, a report signed twice), b's study, S3 copies of both."""
    reading = make_reading(tenants.a, patient_name="张^三")
    report, _ = write_and_sign(reading, findings="右上肺结节 6 mm.")
    user = tenants.a.radiologist
    report = report_actions.do_open_addendum(report, acting_user=user, kind="addendum")
    report = report_actions.do_autosave_draft(
        report,
        acting_user=user,
        content={**report.draft, "addendum": "复查：结节稳定。"},
        base_revision=report.draft_revision,
    )
    report_actions.do_sign_report(Report.objects.get(pk=report.pk), acting_user=user, password=PASSWORD)
    folder = tmp_path / "made"
    folder.mkdir()
    with TestCase.captureOnCommitCallbacks(execute=True):
        for study in range(2):
            uid = pydicom.uid.generate_uid()
            for n in range(2):
                ds = make_ct(
                    study_uid=uid,
                    patient_id=f"A-{study}",
                    patient_name="WANG^LI=王^力",
                    charset="ISO_IR 192",
                    accession=f"ACH{study}",
                    instance_number=n + 1,
                    seed=study * 10 + n,
                    size=32,
                )
                _store(tenants.a.institution, ds, folder)
        other = _store(
            tenants.b.institution, make_ct(patient_id="B-1", patient_name="BRAVO^KEEP", accession="BCH1"), folder
        )
    # A second location: every object also has a copy in the S3 bucket.
    location = StorageLocation.objects.create(
        name="second", kind="s3", bucket=bucket.bucket, endpoint_url=S3_URL, site="second", read_rank=50
    )
    forget()
    second = next(p for p in places(fresh=True) if p.id == location.pk)
    for instance in Instance.objects.all():
        with tempfile.NamedTemporaryFile() as copy:
            copy.write(places()[0].storage.open(instance.storage_key).read())
            copy.flush()
            second.storage.put_file(instance.storage_key, Path(copy.name), instance.sha256)
        ObjectCopy.objects.create(
            instance=instance, location=location, key=instance.storage_key, size=instance.size, sha256=instance.sha256
        )
    return {"reading": reading, "report": report, "other": other}


class Orthanc:
    """An empty Orthanc on free ports, with a temporary configuration (as bench/archive_bench.py starts it)."""

    def __init__(self, home: Path) -> None:
        (home / "db").mkdir(parents=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "Name": "ExitTest",
            "StorageDirectory": str(home / "db"),
            "IndexDirectory": str(home / "db"),
            "HttpPort": port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        (home / "orthanc.json").write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [ORTHANC, f"--logfile={home / 'orthanc.log'}", str(home / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(300):
            try:
                requests.get(f"{self.url}/system", timeout=1).raise_for_status()
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def _pixels(data: bytes) -> bytes:
    return pydicom.dcmread(io.BytesIO(data))[0x7FE00010].value


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _secrets(tenants) -> list[str]:
    """Strings only a's data holds (the schema's examples have Chinese characters, so no single one)."""
    return ["张三", "王力", "A-0", "右上肺结节", "结节稳定", tenants.a.institution.accession_prefix + "0"]


@pytest.mark.s3
@pytest.mark.dicom3tools
@requires_s3
@pytest.mark.skipif(not os.access(ORTHANC, os.X_OK), reason="needs Orthanc: apt-get install orthanc")
def test_a_hospital_leaves_with_its_archive_and_nothing_stays(
    tenants, platform_admin, hospital, bucket, eager, tmp_path
):
    a, b = tenants.a.institution, tenants.b.institution
    admin = api_client(tenants.a.institution_admin)
    # Only a's administrator may export a; others are told nothing exists.
    assert api_client(tenants.b.institution_admin).post("/api/v1/exits/", {"institution": str(a.pk)}).status_code == 404
    assert api_client(tenants.a.radiologist).post("/api/v1/exits/", {"institution": str(a.pk)}).status_code == 404
    with TestCase.captureOnCommitCallbacks(execute=True):
        answer = admin.post("/api/v1/exits/", {"institution": str(a.pk)}, format="json")
    assert answer.status_code == 201, answer.content
    job = ExitJob.objects.get(pk=answer.json()["id"])
    assert job.state == ExitJob.State.DONE, job.error
    shown = admin.get(f"/api/v1/exits/{job.pk}/").json()
    assert shown["progress"] == 1.0 and shown["files_done"] == shown["files_total"]
    assert api_client(tenants.b.institution_admin).get(f"/api/v1/exits/{job.pk}/download/").status_code == 404
    assert api_client(platform_admin).get(f"/api/v1/exits/{job.pk}/download/").status_code == 404

    # The download, whole and resumed with Range.
    whole = b"".join(admin.get(f"/api/v1/exits/{job.pk}/download/").streaming_content)
    assert hashlib.sha256(whole).hexdigest() == job.archive_sha256 and len(whole) == job.archive_size
    cut = len(whole) // 3
    first = admin.get(f"/api/v1/exits/{job.pk}/download/", HTTP_RANGE=f"bytes=0-{cut - 1}")
    rest = admin.get(
        f"/api/v1/exits/{job.pk}/download/", HTTP_RANGE=f"bytes={cut}-", HTTP_IF_RANGE=f'"{job.archive_sha256}"'
    )
    assert (first.status_code, rest.status_code) == (206, 206)
    assert rest["Content-Range"] == f"bytes {cut}-{len(whole) - 1}/{len(whole)}"
    assert b"".join(first.streaming_content) + b"".join(rest.streaming_content) == whole
    assert admin.get(f"/api/v1/exits/{job.pk}/download/", HTTP_RANGE=f"bytes={len(whole)}-").status_code == 416
    stale = admin.get(f"/api/v1/exits/{job.pk}/download/", HTTP_RANGE="bytes=10-", HTTP_IF_RANGE='"other"')
    assert stale.status_code == 200  # an If-Range that no longer matches gets the whole file

    # The manifest names every other file with its SHA-256.
    files = _members(whole)
    manifest = json.loads(files["manifest.json"])
    assert hashlib.sha256(files["manifest.json"]).hexdigest() == job.manifest_sha256
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json", "MANIFEST.sha256"}
    assert all(hashlib.sha256(files[p]).hexdigest() == digest for p, digest in listed.items())
    assert files["MANIFEST.sha256"].decode().count("\n") == len(listed)

    # DICOM: a DICOMDIR naming every object, each object the archive's bytes.
    stored = {i.sop_instance_uid: i for i in Instance.objects.filter(institution=a)}
    dicomdir = pydicom.dcmread(io.BytesIO(files["DICOM/DICOMDIR"]))
    records = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType in ("IMAGE", "ENCAP DOC")]
    assert {r.ReferencedSOPInstanceUIDInFile for r in records} == set(stored)
    for record in records:
        data = files["DICOM/" + "/".join(record.ReferencedFileID)]
        assert hashlib.sha256(data).hexdigest() == stored[record.ReferencedSOPInstanceUIDInFile].sha256
    media = tmp_path / "media"
    for path, data in files.items():
        (media / path).parent.mkdir(parents=True, exist_ok=True)
        (media / path).write_bytes(data)
    file_set = FileSet(media / "DICOM" / "DICOMDIR")  # pydicom reads the File-set back, every file found
    assert {i.SOPInstanceUID for i in file_set} == set(stored)
    assert all(Path(i.path).is_file() for i in file_set)
    checked = subprocess.run(
        ["dciodvfy", str(media / "DICOM" / "DICOMDIR")], capture_output=True, text=True, check=False
    )
    assert "Error" not in checked.stderr + checked.stdout, checked.stderr
    patients = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    assert any("张" in str(r.PatientName) for r in patients)

    # Every report version as PDF and as a valid FHIR R4 Bundle.
    bundles = sorted(p for p in files if p.endswith(".fhir.json"))
    assert len(bundles) == 2 and len([p for p in files if p.endswith(".pdf")]) == 2
    for path in bundles:
        bundle = Bundle.model_validate(json.loads(files[path]))
        kinds = {entry.resource.get_resource_type() for entry in bundle.entry}
        assert kinds == {"DiagnosticReport", "ImagingStudy", "Patient"}
        assert "张" in files[path].decode()
    trail = [json.loads(line) for line in files["audit.jsonl"].decode().splitlines()]
    assert trail and all(e["institution_id"] == str(a.pk) and len(e["hash"]) == 64 for e in trail)
    assert json.loads(files["configuration.json"])["institution"]["slug"] == a.slug

    # Re-imported into an empty Orthanc: the same studies and instances, pixel data byte for byte.
    orthanc = Orthanc(tmp_path / "orthanc")
    try:
        for path, data in files.items():
            if path.startswith("DICOM/") and path != "DICOM/DICOMDIR":
                requests.post(f"{orthanc.url}/instances", data=data, timeout=30).raise_for_status()
        studies = requests.get(f"{orthanc.url}/studies", params={"expand": 1}, timeout=30).json()
        assert {s["MainDicomTags"]["StudyInstanceUID"] for s in studies} == set(
            Study.objects.filter(institution=a).values_list("study_instance_uid", flat=True)
        )
        imported = requests.get(f"{orthanc.url}/instances", params={"expand": 1}, timeout=30).json()
        assert {i["MainDicomTags"]["SOPInstanceUID"] for i in imported} == set(stored)
        for item in imported:
            original = stored[item["MainDicomTags"]["SOPInstanceUID"]]
            with places()[0].storage.open(original.storage_key) as handle:
                ours = handle.read()
            theirs = requests.get(f"{orthanc.url}/instances/{item['ID']}/file", timeout=30).content
            assert _pixels(theirs) == _pixels(ours) and len(_pixels(ours)) > 0
            assert hashlib.sha256(theirs).hexdigest() == original.sha256  # the whole object, as archived
    finally:
        orthanc.stop()

    # The same export into an S3 bucket the administrator names.
    target = S3Storage(bucket.bucket, endpoint_url=S3_URL)
    with TestCase.captureOnCommitCallbacks(execute=True):
        answer = admin.post(
            "/api/v1/exits/",
            {"institution": str(a.pk), "destination": "s3", "bucket": bucket.bucket, "prefix": "handover"},
            format="json",
        )
    to_s3 = ExitJob.objects.get(pk=answer.json()["id"])
    assert to_s3.state == ExitJob.State.DONE, to_s3.error
    root = f"handover/{a.slug}-export/"
    s3_manifest = json.loads(target.client.get_object(Bucket=bucket.bucket, Key=root + "manifest.json")["Body"].read())
    for entry in s3_manifest["files"]:
        body = target.client.get_object(Bucket=bucket.bucket, Key=root + entry["path"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]

    # Offboarding: the platform administrator, with the slug typed to confirm; nobody else.
    assert admin.post(f"/api/v1/exits/{job.pk}/offboard/", {"confirm": a.slug}, format="json").status_code == 404
    platform = api_client(platform_admin)
    assert platform.post(f"/api/v1/exits/{job.pk}/offboard/", {"confirm": "nope"}, format="json").status_code == 400
    assert Institution.objects.filter(pk=a.pk).exists()
    done = platform.post(f"/api/v1/exits/{job.pk}/offboard/", {"confirm": a.slug}, format="json")
    assert done.status_code == 200, done.content
    certificate = platform.get(f"/api/v1/exits/{job.pk}/certificate/").json()
    assert certificate["valid"] is True
    assert certificate["certificate"]["deleted"] | {"bytes": 0, "members": 0} == {
        "patients": 3,
        "studies": 3,
        "series": 5,
        "instances": 5,
        "reports": 1,
        "report_versions": 2,
        "bytes": 0,
        "members": 0,
    }
    assert certificate["certificate"]["objects_removed"]["second"] == 5

    # No row names a any more, except the audit trail, the usage billed and the exit jobs.
    assert not Institution.objects.filter(pk=a.pk).exists()
    assert AuditEvent.objects.filter(institution_id=a.pk).exists()
    with connection.cursor() as cursor:
        for model in apps.get_models():
            table = model._meta.db_table
            if model in (AuditEvent, ExitJob, UsageCounter) or model._meta.app_label in ("sessions", "admin"):
                continue
            for secret in (str(a.pk), "张", "王^力", *_secrets(tenants)):
                cursor.execute(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s', [f"%{secret}%"])  # noqa: S608 (table names from the models)
                assert cursor.fetchone()[0] == 0, f"{table} still holds {secret!r}"
    # No storage location holds an object of a; b's are where they were.
    for place in places(fresh=True):
        assert keys_under(place.storage, f"{a.pk}/") == [], place.name
        assert keys_under(place.storage, f"{b.pk}/"), place.name
    other = hospital["other"]
    with places()[0].storage.open(other.storage_key) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == other.sha256
    assert Study.objects.filter(institution=b).count() == 1
    assert not archive_path(job).exists()

    # The isolation check on every list and page: nobody sees anything of a.
    secrets = [("a", s) for s in _secrets(tenants)]
    for user in (tenants.b.institution_admin, platform_admin):
        client = client_for(user)
        for route in discover():
            if (
                route.params
                or "get" not in route.methods
                or route.template.startswith(("/admin", "/ohif", "/api/schema", "/api/docs", "/api/redoc"))
            ):
                continue
            answer = ask(client, "get", route.template)
            assert answer.status < 500, route.template
            assert not leaked(answer, secrets), (user.username, route.template)


def test_a_cancelled_export_restarts_as_a_new_attempt(tenants, tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    folder = tmp_path / "made"
    folder.mkdir()
    _store(tenants.a.institution, make_ct(patient_name="张^三", charset="ISO_IR 192"), folder)
    job = actions.do_request_export(tenants.a.institution, acting_user=tenants.a.institution_admin)
    job = actions.do_cancel_export(job, acting_user=tenants.a.institution_admin)
    assert actions.do_run_export(job.pk, 1) == ExitJob.State.CANCELLED
    with pytest.raises(actions.ExitRefused):
        actions.do_cancel_export(job, acting_user=tenants.a.institution_admin)
    job = actions.do_restart_export(job, acting_user=tenants.a.institution_admin)
    assert (job.state, job.attempt) == (ExitJob.State.QUEUED, 2)
    assert actions.do_run_export(job.pk, 1) == ExitJob.State.QUEUED  # a task of the old attempt does nothing
    assert actions.do_run_export(job.pk, 2) == ExitJob.State.DONE
    assert actions.do_run_export(job.pk, 2) == ExitJob.State.DONE  # safe to run twice
    with pytest.raises(actions.ExitRefused):
        actions.do_offboard_institution(
            job, acting_user=tenants.a.institution_admin, confirm=tenants.a.institution.slug
        )
    # A cancel while running stops the writer at its next progress report.
    job = actions.do_restart_export(job, acting_user=tenants.a.institution_admin)
    from reports.exit import export

    calls = []

    def cancel_midway(files: int, size: int) -> bool:
        calls.append(files)
        return False

    with pytest.raises(export.Cancelled):
        export.write_export(job, export.TarSink(tmp_path / "x.tar"), export.Progress(cancel_midway, every=0))
    assert calls == [1]


def test_the_exit_page_shows_each_administrator_their_own(tenants, platform_admin, tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    a = tenants.a.institution
    a.name = "阿尔法县医院"
    a.save(update_fields=["name"])
    job = actions.do_request_export(a, acting_user=tenants.a.institution_admin)
    ExitJob.objects.filter(pk=job.pk).update(state=ExitJob.State.DONE, archive_size=1000)  # as if it had run
    page = web_client(tenants.a.institution_admin).get("/reports/exit/")
    text = page.content.decode()
    assert page.status_code == 200 and "阿尔法县医院" in text and "UTC+8" in text
    assert f"/api/v1/exits/{job.pk}/download/" in text
    other = web_client(tenants.b.institution_admin)
    assert str(job.pk) not in other.get("/reports/exit/").content.decode()
    assert other.post(f"/reports/exit/{job.pk}/restart/").status_code == 404
    assert web_client(tenants.a.radiologist).get("/reports/exit/").status_code == 404
    platform = web_client(platform_admin)
    assert f"/reports/exit/{job.pk}/offboard/" in platform.get("/reports/exit/").content.decode()
    assert platform.post(f"/reports/exit/{job.pk}/offboard/", {"confirm": "wrong"}).status_code == 302
    assert Institution.objects.filter(pk=a.pk).exists()
    assert (
        web_client(tenants.a.institution_admin)
        .post(f"/reports/exit/{job.pk}/offboard/", {"confirm": a.slug})
        .status_code
        == 404
    )
    restarted = web_client(tenants.a.institution_admin).post(f"/reports/exit/{job.pk}/restart/")
    assert restarted.status_code == 302 and ExitJob.objects.get(pk=job.pk).attempt == 2


S, M = ExitJob.State, ExitJob
NOW = {"now": None}
TRANSITIONS = {
    "start": NOW,
    "finish": NOW,
    "fail": {"now": None, "error": "x"},
    "cancel": NOW,
    "restart": {},
    "offboard": {"now": None, "by": "platform"},
}
# {(source, method): target}; every other pair is refused.
ALLOWED = {
    (S.QUEUED, "start"): S.RUNNING,
    (S.RUNNING, "finish"): S.DONE,
    (S.RUNNING, "fail"): S.FAILED,
    (S.QUEUED, "cancel"): S.CANCELLED,
    (S.RUNNING, "cancel"): S.CANCELLED,
    (S.FAILED, "restart"): S.QUEUED,
    (S.CANCELLED, "restart"): S.QUEUED,
    (S.DONE, "restart"): S.QUEUED,
    (S.DONE, "offboard"): S.OFFBOARDED,
}


@pytest.mark.parametrize("source", list(S), ids=[s.value for s in S])
def test_exit_job_state_machine(source):
    for method, kwargs in TRANSITIONS.items():
        job = ExitJob(institution_id=uuid.uuid4())
        job.__dict__["state"] = source
        if (source, method) in ALLOWED:
            getattr(job, method)(**kwargs)
            assert job.state == ALLOWED[(source, method)]
        else:
            with pytest.raises(TransitionNotAllowed):
                getattr(job, method)(**kwargs)
