"""DCE-MRI maps end to end: a synthetic dynamic series over C-STORE, the map job, Parametric Maps recovered.

The series is built here from known Ktrans and ve maps with a forward model of
its own (Parker's formula, a discrete convolution, the SPGR signal equation),
sent with dcmtk's storescu to the real DICOM service, mapped by the job
(Celery eager) and the stored Parametric Maps compared with the truth.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from archive.dimse import start_server
from archive.ingest import store_instance
from archive.models import DicomNode, Instance, Series, Study
from archive.storage import get_storage
from pacs_cloud import celery_app
from pacs_cloud.fsm import history
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import dcmtk
from tests.conftest import api_client, free_port
from viewer.analysis import actions
from viewer.analysis import series as dynamic
from viewer.analysis.models import DceMapJob

pytestmark = [pytest.mark.dcmtk, pytest.mark.dicom3tools]

SIZE, SLICES, PHASES, DT = 32, 2, 20, 15.0
TR_MS, FLIP, T1_MS, R1, HCT, BAT = 5.0, 15.0, 1400.0, 4.5, 0.45, 30.0
TIMES = np.arange(PHASES) * DT
# Truth: Ktrans rises across the columns, ve down the rows.
KTRANS = np.broadcast_to(np.linspace(0.05, 0.35, SIZE)[None, :], (SIZE, SIZE))
VE = np.broadcast_to(np.linspace(0.15, 0.5, SIZE)[:, None], (SIZE, SIZE))


def parker_blood_mM(t_s: np.ndarray) -> np.ndarray:
    """Parker et al. 2006, Table 1, written out (time in minutes from the bolus arrival)."""
    t = np.clip(t_s - BAT, 0.0, None) / 60.0
    gauss = sum(
        a / (s * np.sqrt(2 * np.pi)) * np.exp(-((t - m) ** 2) / (2 * s**2))
        for a, m, s in ((0.809, 0.17046, 0.0563), (0.330, 0.365, 0.132))
    )
    curve = gauss + 1.050 * np.exp(-0.1685 * t) / (1 + np.exp(-38.078 * (t - 0.483)))
    return np.where(t_s > BAT, curve, 0.0)


def tissue_mM(ktrans_per_min: np.ndarray, ve: np.ndarray) -> np.ndarray:
    """Tofts by discrete convolution on a 0.1 s grid: C = Ktrans · Cp ⊗ exp(−kep t). Shape (…, phases)."""
    step = 0.1
    grid = np.arange(0.0, TIMES[-1] + step, step)
    cp = parker_blood_mM(grid) / (1 - HCT)
    k = ktrans_per_min[..., None] / 60.0
    kernel = k * np.exp(-(k / ve[..., None]) * grid)
    out = np.empty((*ktrans_per_min.shape, PHASES))
    flat_k, flat_out = kernel.reshape(-1, grid.size), out.reshape(-1, PHASES)
    for i in range(flat_k.shape[0]):
        flat_out[i] = np.interp(TIMES, grid, np.convolve(cp, flat_k[i])[: grid.size] * step)
    return out


def spgr(concentration_mM: np.ndarray, m0: float = 2000.0) -> np.ndarray:
    r1 = 1000.0 / T1_MS + R1 * concentration_mM
    e1 = np.exp(-TR_MS / 1000.0 * r1)
    a = np.deg2rad(FLIP)
    return m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


# The Patient and Study modules, copied from an image of the study the series joins.
JOINED = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
    "SpecificCharacterSet",
)


def write_series(folder: Path, *, joining: Dataset | None = None) -> tuple[str, str]:
    """One series, every temporal position in it (Temporal Position Identifier, Trigger Time).

    With ``joining``, the series belongs to that image's study and patient.
    """
    signal = spgr(tissue_mM(KTRANS, VE))  # (rows, columns, phases)
    study_uid, series_uid, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    for p in range(PHASES):
        for s in range(SLICES):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
                study_uid,
                series_uid,
                frame_of_reference,
            )
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
                "Zhang^San=张^三",
                "DCE-1",
                "19680301",
                "F",
            )
            ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20261207", "093000", "DCE0001", "1"
            ds.ReferringPhysicianName, ds.Manufacturer, ds.PositionReferenceIndicator = "", "Synthetic", ""
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 7, p * SLICES + s + 1
            ds.SeriesDescription, ds.BodyPartExamined = "DCE T1 FL3D", "BREAST"
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.MagneticFieldStrength = TR_MS, 1.5, FLIP, 1.5
            ds.EchoTrainLength, ds.ContrastBolusAgent = 1, "Gadovist"
            ds.TemporalPositionIdentifier, ds.NumberOfTemporalPositions = p + 1, PHASES
            ds.TriggerTime = float(TIMES[p] * 1000.0)
            seconds = 9 * 3600 + 30 * 60 + TIMES[p]
            ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:06.3f}"
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 4.0 * s], [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.SliceThickness, ds.SliceLocation = [1.0, 1.0], 4.0, 4.0 * s
            ds.Rows = ds.Columns = SIZE
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = np.rint(signal[..., p]).astype(np.uint16).tobytes()
            for keyword in JOINED if joining is not None else ():
                if keyword in joining:
                    setattr(ds, keyword, getattr(joining, keyword))
            ds.save_as(folder / f"p{p:02d}s{s}.dcm", enforce_file_format=True)
    return (joining.StudyInstanceUID if joining is not None else study_uid), series_uid


def write_vfa_series(folder: Path, joining: Dataset, flips: tuple[float, ...] = (3.0, 15.0)) -> None:
    """A variable-flip-angle series over the same slices: the study's T1 map (T1 = T1_MS everywhere)."""
    series_uid = generate_uid()
    for f, flip in enumerate(flips):
        e1 = np.exp(-TR_MS / T1_MS)
        a = np.deg2rad(flip)
        value = 3000.0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
        for s in range(SLICES):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, generate_uid(), series_uid
            for keyword in (*JOINED, "FrameOfReferenceUID", "Manufacturer", "PositionReferenceIndicator"):
                if keyword in joining:
                    setattr(ds, keyword, getattr(joining, keyword))
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = (
                "MR",
                6,
                f * SLICES + s + 1,
                "VFA T1",
            )
            ds.RepetitionTime, ds.FlipAngle, ds.EchoTime = TR_MS, flip, 1.5
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 4.0 * s], [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 4.0
            ds.Rows = ds.Columns = SIZE
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = np.full((SIZE, SIZE), round(value), dtype=np.uint16).tobytes()
            ds.save_as(folder / f"vfa{f}s{s}.dcm", enforce_file_format=True)


@pytest.fixture
def dce_study(tenants, transactional_db, tmp_path, settings):
    """The synthetic DCE series, sent by the scanner ALPHA_MR to PACSCLOUD over C-STORE."""
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_MR", host="127.0.0.1")
    folder = tmp_path / "dce"
    folder.mkdir()
    study_uid, series_uid = write_series(folder)
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port)
    try:
        sent = dcmtk("storescu", "-aet", "ALPHA_MR", "-aec", "PACSCLOUD", "+sd", "127.0.0.1", str(port), str(folder))
    finally:
        server.shutdown()
    assert sent.returncode == 0, sent.stderr
    study = Study.objects.get(study_instance_uid=study_uid)
    return study, Series.objects.get(series_instance_uid=series_uid, study=study)


@pytest.fixture
def eager_tasks():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def stored_dataset(instance_pk: str) -> Dataset:
    instance = Instance.objects.get(pk=instance_pk)
    with get_storage().open(instance.storage_key) as handle:
        return pydicom.dcmread(handle)


def by_position(ds: Dataset) -> np.ndarray:
    """The map's frames in the source's slice order (feet to head), whatever order the object lists them in."""
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    return ds.pixel_array[np.argsort(z)]


def test_maps_from_a_dynamic_series_recover_the_true_ktrans_and_ve(dce_study, tenants, eager_tasks, tmp_path):
    study, series = dce_study
    volume = dynamic.load([series])
    assert volume.shape == (PHASES, SLICES, SIZE, SIZE)
    assert volume.times_s == pytest.approx(TIMES)
    client = api_client(tenants.a.radiologist)
    body = {
        "study": str(study.pk),
        "series": [str(series.pk)],
        "mask": [{"slice": 1}],
        "model": "tofts",
        "aif": {"population": "parker", "bolus_arrival_s": BAT},
        "t1_ms": T1_MS,
        "relaxivity": R1,
        "hematocrit": HCT,
    }
    started = client.post("/api/v1/analysis/dce/", body, format="json")
    assert started.status_code == 202, started.data
    job = client.get(f"/api/v1/analysis/dce/{started.data['id']}/").data
    assert job["state"] == "done", job["error"]
    assert job["progress"] == 1.0
    assert job["results"]["voxels"] == SIZE * SIZE and job["results"]["phases"] == PHASES
    assert set(job["results"]["maps"]) == {"ktrans", "ve", "kep", "iauc60"}

    ktrans = stored_dataset(job["results"]["maps"]["ktrans"]["instance"])
    assert ktrans.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert ktrans.StudyInstanceUID == study.study_instance_uid
    mapping = ktrans.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "/min"
    values = by_position(ktrans)  # (slices, rows, columns), float32: the values themselves
    assert values.dtype == np.float32 and values.shape == (SLICES, SIZE, SIZE)
    assert not values[0].any()  # outside the mask
    assert np.all(np.abs(values[1] - KTRANS) <= 0.005 + 0.1 * KTRANS), "Ktrans beyond the OSIPI tolerance"
    ve = by_position(stored_dataset(job["results"]["maps"]["ve"]["instance"]))[1]
    assert np.abs(ve - VE).max() <= 0.05
    kep = by_position(stored_dataset(job["results"]["maps"]["kep"]["instance"]))[1]
    assert np.median(np.abs(kep - KTRANS / VE) / (KTRANS / VE)) < 0.05

    # Archived like every image: in the study's index, a series of its own, valid for dicom3tools.
    assert Series.objects.filter(study=study).count() == 1 + 4
    path = tmp_path / "ktrans.dcm"
    ktrans.save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    assert errors == [], checked.stderr
    assert AuditEvent.objects.filter(action="analysis.dce.map.start", object_id=job["id"]).exists()
    steps = [(t.source, t.target, t.actor_label) for t in history(DceMapJob.objects.get(pk=job["id"]))]
    assert steps == [("queued", "running", "dce-maps"), ("running", "done", "dce-maps")]

    # The overlay reads a slice of the archived map back as numbers.
    plane = client.get(f"/api/v1/analysis/dce/{job['id']}/maps/ktrans/1/").data
    assert (plane["rows"], plane["columns"], plane["unit"]) == (SIZE, SIZE, "1/min")
    assert plane["values"][11 * SIZE + 11] == pytest.approx(KTRANS[11, 11], abs=0.005 + 0.1 * KTRANS[11, 11])
    assert client.get(f"/api/v1/analysis/dce/{job['id']}/maps/ktrans/2/").status_code == 404

    # The viewer offers the study's maps and overlays one on any time point's image of the same slice.
    offered = client.get("/api/v1/analysis/parametric-maps/", {"study": str(study.pk)}).data["results"]
    assert sorted((m["label"], m["unit"]) for m in offered) == [
        ("Ktrans", "per minute"),
        ("iAUC60", "millimole per liter times second"),
        ("kep", "per minute"),
        ("ve", "milliliter per milliliter"),
    ]
    pm = job["results"]["maps"]["ktrans"]["instance"]
    late = volume.frames[PHASES - 3]  # a post-contrast time point: slices 0 and 1
    over = client.get(f"/api/v1/analysis/parametric-maps/{pm}/values/", {"over": str(late[1].instance.pk)})
    assert over.status_code == 200, over.data
    assert (over.data["rows"], over.data["columns"], over.data["label"]) == (SIZE, SIZE, "Ktrans")
    assert over.data["values"][11 * SIZE + 20] == pytest.approx(KTRANS[11, 20], abs=0.005 + 0.1 * KTRANS[11, 20])
    below = client.get(f"/api/v1/analysis/parametric-maps/{pm}/values/", {"over": str(late[0].instance.pk)}).data
    assert below["frame"] != over.data["frame"] and not any(below["values"])  # slice 0 was outside the mask
    assert AuditEvent.objects.filter(action="analysis.parametric_map.read", object_id=pm).count() == 2
    outsider = api_client(tenants.c.radiologist)
    assert (
        outsider.get(f"/api/v1/analysis/parametric-maps/{pm}/values/", {"over": str(late[1].instance.pk)}).status_code
        == 404
    )
    # An image outside the study is not found; a malformed one is refused.
    values_url = f"/api/v1/analysis/parametric-maps/{pm}/values/"
    assert client.get(values_url, {"over": "00000000-0000-0000-0000-000000000000"}).status_code == 404
    assert client.get(values_url, {"over": "slice-1"}).status_code == 400
    own = client.get(values_url, {"frame": over.data["frame"]}).data  # the map's own frame, no image named
    assert own["values"] == over.data["values"]
    assert client.get(values_url, {"frame": SLICES + 1}).status_code == 404


def test_a_region_gives_its_curves_descriptors_and_fit(dce_study, tenants, tmp_path):
    study, series = dce_study
    # The study's variable-flip-angle series gives the pre-contrast T1 (no T1 is assumed or given).
    folder = tmp_path / "vfa"
    folder.mkdir()
    write_vfa_series(folder, joining=stored_dataset(str(Instance.objects.filter(series=series).first().pk)))
    for path in sorted(folder.iterdir()):
        store_instance(path, institution=tenants.a.institution)
    client = api_client(tenants.a.radiologist)
    body = {
        "study": str(study.pk),
        "series": [str(series.pk)],
        "region": {"slice": 0, "polygon": [[10, 10], [12, 10], [12, 12], [10, 12]]},
        "label": "lesion 1",
        "aif": {"population": "parker", "bolus_arrival_s": BAT},
        "relaxivity": R1,
    }
    answer = client.post("/api/v1/analysis/dce/regions/", body, format="json")
    assert answer.status_code == 201, answer.data
    results = answer.data["results"]
    assert results["pixels"] == 9 and results["times_s"] == pytest.approx(TIMES.tolist())
    assert results["t1_source"] == "vfa" and results["t1_ms"] == pytest.approx(T1_MS, rel=0.02)
    assert len(results["signal"]) == len(results["aif_mM"]) == PHASES
    assert results["enhancement"]["curve_type"] in ("I", "II", "III")
    assert results["enhancement"]["onset_s"] == pytest.approx(BAT, abs=DT)
    assert results["fit"]["ktrans_per_min"] == pytest.approx(KTRANS[11, 11], abs=0.005 + 0.1 * KTRANS[11, 11])
    assert results["fit"]["ve"] == pytest.approx(VE[11, 11], abs=0.05)
    listed = client.get("/api/v1/analysis/dce/regions/", {"study": str(study.pk)}).data["results"]
    assert [r["label"] for r in listed] == ["lesion 1"]
    assert (
        api_client(tenants.c.radiologist).get("/api/v1/analysis/dce/regions/", {"study": str(study.pk)}).status_code
        == 404
    )


def test_a_job_is_cancelled_queued_or_running_and_bad_requests_are_refused(dce_study, tenants):
    study, series = dce_study
    client = api_client(tenants.a.radiologist)
    body = {"study": str(study.pk), "series": [str(series.pk)], "mask": [{"slice": 0}]}
    queued = client.post("/api/v1/analysis/dce/", body, format="json").data
    cancelled = client.post(f"/api/v1/analysis/dce/{queued['id']}/cancel/").data
    assert cancelled["state"] == "cancelled"
    assert actions.do_begin_dce_map_job(queued["id"]) is None  # a late delivery does nothing

    running = client.post("/api/v1/analysis/dce/", body, format="json").data
    assert actions.do_begin_dce_map_job(running["id"]) is not None
    assert actions.do_report_dce_map_progress(running["id"], 0.5)
    assert client.post(f"/api/v1/analysis/dce/{running['id']}/cancel/").data["cancel_requested"]
    assert not actions.do_report_dce_map_progress(running["id"], 0.75)  # the worker stops here
    assert AuditEvent.objects.filter(action="analysis.dce.map.cancel").count() == 2
    # Another institution's user learns nothing about the job.
    assert api_client(tenants.c.radiologist).get(f"/api/v1/analysis/dce/{running['id']}/").status_code == 404
    assert DceMapJob.objects.get(pk=running["id"]).state == "running"
    # The worker then ends it: the job's history holds each step, the queued one's its cancellation.
    actions.do_end_dce_map_job(running["id"], DceMapJob.State.CANCELLED)
    assert [t.target for t in history(DceMapJob.objects.get(pk=running["id"]))] == ["running", "cancelled"]
    cancelled_at_once = history(DceMapJob.objects.get(pk=queued["id"])).get()
    assert (cancelled_at_once.method, cancelled_at_once.actor) == ("cancel", tenants.a.radiologist)

    # A series outside the study, or a polygon of two points, is refused before anything is queued.
    body = {
        "study": str(study.pk),
        "series": [str(series.pk), "00000000-0000-0000-0000-000000000000"],
        "mask": [{"slice": 0}],
    }
    refused = client.post("/api/v1/analysis/dce/", body, format="json")
    assert refused.status_code == 400 and "series" in refused.data
    region = {"slice": 0, "polygon": [[10, 10], [12, 10], [12, 12]]}
    refused = client.post("/api/v1/analysis/dce/regions/", {**body, "region": region}, format="json")
    assert refused.status_code == 400 and "series" in refused.data
    bad_polygon = {**body, "series": [str(series.pk)], "mask": [{"slice": 0, "polygon": [[1, 1], [2, 2]]}]}
    assert client.post("/api/v1/analysis/dce/", bad_polygon, format="json").status_code == 400
