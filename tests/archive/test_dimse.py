"""The cloud DICOM service with real peers: dcmtk's storescu, findscu, movescu, getscu and storescp."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from archive.dimse import start_server
from archive.models import DicomNode, Instance, Study
from archive.storage import get_storage
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import (
    SAMPLES,
    STORESCU_PROPOSE,
    dataset_bytes,
    dcmtk,
    differences,
    make_ct,
    sample_path,
    with_fresh_uids,
    write,
)
from tests.conftest import free_port

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture
def cloud(tenants, transactional_db, storage_dir):
    """PACSCLOUD on a free port; ALPHA_CT and ALPHA_WS (a workstation receiving C-MOVEs) of institution a,
    BRAVO_CT of institution b."""
    destination_port = free_port()
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_CT", host="127.0.0.1")
    DicomNode.objects.create(
        institution=tenants.a.institution, ae_title="ALPHA_WS", host="127.0.0.1", port=destination_port
    )
    DicomNode.objects.create(institution=tenants.b.institution, ae_title="BRAVO_CT", host="127.0.0.1")
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port)
    server.destination_port = destination_port  # type: ignore[attr-defined]
    yield server, port
    server.shutdown()


def storescu(
    port: int, *paths: str | Path, calling: str = "ALPHA_CT", extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return dcmtk("storescu", "-aet", calling, "-aec", "PACSCLOUD", *extra, "127.0.0.1", str(port), *map(str, paths))


def stored(instance: Instance) -> bytes:
    with get_storage().open(instance.storage_key) as handle:
        return handle.read()


def test_a_configured_modality_gets_an_echo(cloud):
    _, port = cloud
    assert dcmtk("echoscu", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "127.0.0.1", str(port)).returncode == 0


def test_an_unknown_calling_ae_is_rejected(cloud):
    _, port = cloud
    result = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "PACSCLOUD", "127.0.0.1", str(port))
    assert result.returncode != 0
    assert "Rejected" in result.stderr + result.stdout


def test_sample_files_in_every_transfer_syntax_are_stored_as_received(cloud, tmp_path):
    _, port = cloud
    folder = tmp_path / "samples"
    folder.mkdir()
    files = {}
    for name, (filename, syntax) in SAMPLES.items():
        files[name] = with_fresh_uids(sample_path(filename), folder / f"{name}.dcm")
        assert str(pydicom.dcmread(files[name], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    for name, filename in {"iso_ir_192": "chrX1.dcm", "gb18030": "chrX2.dcm"}.items():
        files[name] = with_fresh_uids(sample_path(filename), folder / f"{name}.dcm")
    for name, path in files.items():
        # One association per file, proposing only the file's own transfer syntax.
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        result = storescu(port, path, extra=("-R", STORESCU_PROPOSE[syntax]))
        assert result.returncode == 0, f"{name}: {result.stderr}"
    assert Instance.objects.count() == len(files)
    for name, path in files.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
        assert instance.transfer_syntax_uid == str(ds.file_meta.TransferSyntaxUID), name
        # storescu re-encodes the header as it sends; the data set and its pixel data arrive intact.
        assert differences(stored(instance), path) == [], name
    assert Study.objects.get(patient__name="Wang^XiaoDong=王^小东").patient.name_ideographic == "王^小东"


def ct_series(folder: Path, count: int = 5, **kwargs) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    first = make_ct(**kwargs)
    paths = []
    for number in range(1, count + 1):
        ds = make_ct(
            study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, instance_number=number, **kwargs
        )
        paths.append(write(ds, folder / f"ct{number:03d}.dcm"))
    return paths


def findscu(
    port: int,
    *keys: str,
    calling: str = "ALPHA_CT",
    model: str = "-S",
    extra: tuple[str, ...] = (),
    query: Path | None = None,
) -> list[Dataset]:
    """C-FIND with findscu; the answers as data sets (written by findscu with -X)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"findscu-{os.getpid()}-{time.monotonic_ns()}"
    out.mkdir()
    args = ["findscu", model, "-aet", calling, "-aec", "PACSCLOUD", "-X", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    result = dcmtk(*args, "127.0.0.1", str(port), *([str(query)] if query else []))
    assert result.returncode == 0, result.stderr
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    for path in out.iterdir():
        path.unlink()
    out.rmdir()
    return answers


def test_findscu_finds_studies_series_and_images(cloud, tmp_path):
    _, port = cloud
    paths = ct_series(tmp_path / "ct", 5, patient_id="FIND01", patient_name="FINDER^ANNA", accession="A77")
    assert storescu(port, *paths).returncode == 0
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID

    studies = findscu(
        port, "QueryRetrieveLevel=STUDY", "PatientID=FIND01", "StudyInstanceUID", "PatientName",
        "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "AccessionNumber",
    )  # fmt: skip
    assert len(studies) == 1
    answer = studies[0]
    assert answer.StudyInstanceUID == study_uid
    assert str(answer.PatientName) == "FINDER^ANNA"
    assert int(answer.NumberOfStudyRelatedInstances) == 5
    assert answer.ModalitiesInStudy == "CT"
    assert answer.AccessionNumber == "A77"

    by_name = findscu(port, "QueryRetrieveLevel=STUDY", "PatientName=FIND*", "StudyInstanceUID")
    assert [a.StudyInstanceUID for a in by_name] == [study_uid]
    by_date = findscu(port, "QueryRetrieveLevel=STUDY", "StudyDate=20240101-20241231", "StudyInstanceUID")
    assert [a.StudyInstanceUID for a in by_date] == [study_uid]
    assert findscu(port, "QueryRetrieveLevel=STUDY", "StudyDate=20250101-", "StudyInstanceUID") == []

    series = findscu(port, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID", "Modality",
                     "NumberOfSeriesRelatedInstances")  # fmt: skip
    assert len(series) == 1 and int(series[0].NumberOfSeriesRelatedInstances) == 5
    images = findscu(port, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}",
                     f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber")  # fmt: skip
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3, 4, 5]
    patients = findscu(port, "QueryRetrieveLevel=PATIENT", "PatientID=FIND01", "PatientName",
                       "NumberOfPatientRelatedStudies", model="-P")  # fmt: skip
    assert len(patients) == 1 and int(patients[0].NumberOfPatientRelatedStudies) == 1
    assert AuditEvent.objects.filter(action="archive.dimse.search", actor="ALPHA_CT").count() == 7


def test_findscu_with_a_gb18030_wildcard_returns_the_ideographic_name_intact(cloud, tmp_path):
    _, port = cloud
    path = with_fresh_uids(sample_path("chrX2.dcm"), tmp_path / "gb.dcm")
    assert storescu(port, path).returncode == 0
    # The query itself is encoded in GB18030, as a Chinese workstation sends it.
    identifier = Dataset()
    identifier.SpecificCharacterSet = "GB18030"
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "王*"
    identifier.StudyInstanceUID = ""
    query = tmp_path / "query.dcm"
    identifier.save_as(query, implicit_vr=False, little_endian=True)
    assert "王*".encode("gb18030") in query.read_bytes()
    answers = findscu(port, query=query)
    assert len(answers) == 1
    assert answers[0].SpecificCharacterSet == "GB18030"
    assert answers[0].PatientName.ideographic == "王^小东"


def test_another_institutions_modality_finds_nothing_of_ours(cloud, tmp_path):
    _, port = cloud
    assert storescu(port, *ct_series(tmp_path / "ct", 2, patient_id="SECRET1")).returncode == 0
    assert findscu(port, "QueryRetrieveLevel=STUDY", "PatientID=SECRET1", "StudyInstanceUID", calling="BRAVO_CT") == []


class Storescp:
    """dcmtk's storescp as a C-MOVE destination."""

    def __init__(self, port: int, folder: Path, ae_title: str = "ALPHA_WS") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.process = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(folder), "+B", "+xa", str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)


def test_movescu_moves_a_study_to_a_configured_node(cloud, tmp_path):
    server, port = cloud
    paths = ct_series(tmp_path / "ct", 4, patient_id="MOVE01")
    compressed = with_fresh_uids(sample_path("JPEG2000.dcm"), tmp_path / "j2k.dcm", PatientID="MOVE02")
    assert storescu(port, *paths).returncode == 0
    assert storescu(port, compressed, extra=("-R", "-xw")).returncode == 0
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    receiver = Storescp(server.destination_port, tmp_path / "moved")
    try:
        result = dcmtk(
            "movescu", "-S", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "-aem", "ALPHA_WS",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        moved = receiver.files()
        assert len(moved) == 4
        assert sorted(dataset_bytes(p) for p in moved) == sorted(dataset_bytes(p) for p in paths)
        j2k_uid = pydicom.dcmread(compressed, stop_before_pixels=True).StudyInstanceUID
        result = dcmtk(
            "movescu", "-S", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "-aem", "ALPHA_WS",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={j2k_uid}", "127.0.0.1", str(port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        received = [p for p in receiver.files() if p not in moved]
        assert len(received) == 1
        # storescp accepts JPEG 2000, so the object travels as it was received.
        assert pydicom.dcmread(received[0]).PixelData == pydicom.dcmread(compressed).PixelData
    finally:
        receiver.stop()
    assert AuditEvent.objects.filter(action="archive.study.retrieve", actor="ALPHA_CT").count() == 2


def test_a_move_to_an_unknown_or_foreign_destination_is_refused(cloud, tmp_path):
    _, port = cloud
    paths = ct_series(tmp_path / "ct", 1, patient_id="MOVE03")
    assert storescu(port, *paths).returncode == 0
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    for destination in ("NOWHERE", "BRAVO_CT"):
        result = dcmtk(
            "movescu", "-S", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "-aem", destination,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port),
        )  # fmt: skip
        assert result.returncode != 0
        assert "MoveDestinationUnknown" in result.stderr


def test_getscu_gets_a_series_back_over_its_own_association(cloud, tmp_path):
    _, port = cloud
    paths = ct_series(tmp_path / "ct", 3, patient_id="GET01")
    assert storescu(port, *paths).returncode == 0
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "-S", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}", "127.0.0.1", str(port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = sorted(out.iterdir())
    assert len(got) == 3
    assert sorted(dataset_bytes(p) for p in got) == sorted(dataset_bytes(p) for p in paths)


def test_getscu_without_jpeg_2000_gets_the_image_decoded(cloud, tmp_path):
    _, port = cloud
    compressed = with_fresh_uids(sample_path("JPEG2000.dcm"), tmp_path / "j2k.dcm", PatientID="GET02")
    assert storescu(port, compressed, extra=("-R", "-xw")).returncode == 0
    ds = pydicom.dcmread(compressed)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "-S", "-aet", "ALPHA_CT", "-aec", "PACSCLOUD", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "127.0.0.1", str(port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (got,) = out.iterdir()
    received = pydicom.dcmread(got)
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (received.pixel_array == ds.pixel_array).all()


def send_file(port: int, path: Path, calling: str = "ALPHA_CT") -> Dataset:
    """A C-STORE of a file's data set bytes as they are (what a broken modality might send), with pynetdicom."""
    from pynetdicom import _config

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCLOUD")
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes without decoding them
    try:
        return assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def test_broken_c_stores_are_refused_with_a_reason(cloud, tmp_path, storage_dir):
    _, port = cloud
    good = make_ct(patient_id="BAD01", size=64)
    full = write(good, tmp_path / "good.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size - 4000])
    truncated = send_file(port, cut)
    assert truncated.Status == 0xC000
    assert "short" in truncated.ErrorComment
    assert send_file(port, full).Status == 0
    good.SeriesDescription = "OTHER BYTES"
    conflict = send_file(port, write(good, tmp_path / "other.dcm"))
    assert conflict.Status == 0x0111
    assert conflict.ErrorComment.startswith("archived with other content; this one is kept aside")
    assert Instance.objects.count() == 1
    assert not list((storage_dir / ".incoming").glob("*.tmp"))  # the refused ones left nothing behind
