"""DCE-MRI: one series per time point, an arterial input drawn on an artery, a curve saved as a key image.

The acquisition is built here with a forward model of its own: Parker's
whole-blood curve in an artery (columns 0–2, blood T1), Tofts tissue by a
discrete convolution elsewhere, the SPGR signal equation, every time point
its own series stored out of order, with only Acquisition Time to order
them. Sampled every 2.5 s, so a region on the artery gives a usable input.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from archive.ingest import store_instance
from archive.models import Instance, Series, Study
from archive.storage import get_storage
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client
from viewer.analysis import series as dynamic
from viewer.analysis.plot import TISSUE
from viewer.models import KeyImage

pytestmark = [pytest.mark.dicom3tools]

SIZE, PHASES, DT = 16, 48, 2.5
TR_MS, FLIP, R1, HCT, BAT = 5.0, 15.0, 4.5, 0.45, 20.0
TISSUE_T1_MS, BLOOD_T1_MS = 1400.0, 1440.0
KTRANS, VE = 0.2, 0.3
TIMES = np.arange(PHASES) * DT
ARTERY = {"slice": 0, "polygon": [[0, 0], [2, 0], [2, 15], [0, 15]]}
LESION = {"slice": 0, "polygon": [[6, 4], [12, 4], [12, 12], [6, 12]]}


def parker_blood_mM(t_s: np.ndarray) -> np.ndarray:
    """Parker et al. 2006, Table 1 (time in minutes from the bolus arrival)."""
    t = np.clip(t_s - BAT, 0.0, None) / 60.0
    gauss = sum(
        a / (s * np.sqrt(2 * np.pi)) * np.exp(-((t - m) ** 2) / (2 * s**2))
        for a, m, s in ((0.809, 0.17046, 0.0563), (0.330, 0.365, 0.132))
    )
    curve = gauss + 1.050 * np.exp(-0.1685 * t) / (1 + np.exp(-38.078 * (t - 0.483)))
    return np.where(t_s > BAT, curve, 0.0)


def tofts_mM() -> np.ndarray:
    """C = Ktrans · Cp ⊗ exp(−kep t), convolved on a 0.1 s grid, sampled at TIMES."""
    step = 0.1
    grid = np.arange(0.0, TIMES[-1] + step, step)
    cp = parker_blood_mM(grid) / (1 - HCT)
    k = KTRANS / 60.0
    kernel = k * np.exp(-(k / VE) * grid)
    return np.interp(TIMES, grid, np.convolve(cp, kernel)[: grid.size] * step)


def spgr(concentration_mM: np.ndarray, t1_ms: float, m0: float = 3000.0) -> np.ndarray:
    e1 = np.exp(-TR_MS / 1000.0 * (1000.0 / t1_ms + R1 * concentration_mM))
    a = np.deg2rad(FLIP)
    return m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


def phase_images() -> np.ndarray:
    """(phases, rows, columns) signal: the artery in columns 0–2, tissue elsewhere."""
    images = np.empty((PHASES, SIZE, SIZE))
    images[:] = spgr(tofts_mM(), TISSUE_T1_MS)[:, None, None]
    images[:, :, :3] = spgr(parker_blood_mM(TIMES), BLOOD_T1_MS)[:, None, None]
    return images


def write_series_per_time_point(folder: Path, order: list[int]) -> list[str]:
    """One single-image series per time point; series numbers follow ``order``, not time.

    Acquisition Time is the only clock (no Temporal Position Identifier, no Trigger Time).
    """
    images = phase_images()
    study_uid, frame_of_reference = generate_uid(), generate_uid()
    uids = []
    for p in range(PHASES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            study_uid,
            generate_uid(),
            frame_of_reference,
        )
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Zhang^San=张^三", "DCE-2", "19700101", "F"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20261208", "100000", "DCE0002", "2"
        ds.ReferringPhysicianName, ds.Manufacturer, ds.PositionReferenceIndicator = "", "Synthetic", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 100 + order[p], 1
        ds.SeriesDescription, ds.BodyPartExamined = "DCE dynamic", "BREAST"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.MagneticFieldStrength = TR_MS, 1.5, FLIP, 1.5
        ds.ContrastBolusAgent = "Gadovist"
        seconds = 10 * 3600 + TIMES[p]
        ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:06.3f}"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 4.0
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.rint(images[p]).astype(np.uint16).tobytes()
        ds.save_as(folder / f"p{p:02d}.dcm", enforce_file_format=True)
        uids.append(ds.SeriesInstanceUID)
    return uids


@pytest.fixture
def per_time_point(tenants, tmp_path):
    """The acquisition stored through the archive's ingest, time points in a shuffled order."""
    folder = tmp_path / "dce"
    folder.mkdir()
    order = list(range(PHASES))
    random.Random(18).shuffle(order)
    uids = write_series_per_time_point(folder, order)
    for p in order:
        store_instance(folder / f"p{p:02d}.dcm", institution=tenants.a.institution)
    study = Series.objects.get(series_instance_uid=uids[0]).study
    return study, [Series.objects.get(series_instance_uid=uid) for uid in uids]


def analyse(client, study: Study, series: list[Series], aif: dict) -> dict:
    body = {
        "study": str(study.pk),
        "series": [str(s.pk) for s in series],
        "region": LESION,
        "label": "病灶 1",
        "aif": aif,
        "t1_ms": TISSUE_T1_MS,
        "relaxivity": R1,
        "hematocrit": HCT,
    }
    answer = client.post("/api/v1/analysis/dce/regions/", body, format="json")
    assert answer.status_code == 201, answer.data
    return answer.data


def test_series_per_time_point_in_time_order_and_an_arterial_input_drawn_on_an_artery(per_time_point, tenants):
    study, in_time_order = per_time_point
    # The page offers the series as one acquisition, whatever order they arrived and are numbered in.
    offered = dynamic.dynamic_series_of(list(study.series.order_by("series_number")))
    assert [sorted(s.pk for s in group) for group in offered] == [sorted(s.pk for s in in_time_order)]
    volume = dynamic.load(offered[0])
    assert volume.shape == (PHASES, 1, SIZE, SIZE)
    assert volume.times_s == pytest.approx(TIMES)
    assert np.array_equal(volume.data[:, 0], np.rint(phase_images()).astype(np.float32))
    assert [frames[0].instance.series_id for frames in volume.frames] == [s.pk for s in in_time_order]

    # The arterial input drawn on the artery is shown and used in the fit, as the population one is.
    series = offered[0]
    client = api_client(tenants.a.radiologist)
    drawn = analyse(client, study, series, {"region": ARTERY})["results"]
    # Its curve, shown with the region's: the artery's plasma concentration at every time point.
    plasma = parker_blood_mM(TIMES) / (1 - HCT)
    assert np.abs(np.array(drawn["aif_mM"]) - plasma).max() < 0.05 * plasma.max()
    population = analyse(client, study, series, {"population": "parker", "bolus_arrival_s": BAT})["results"]
    assert not np.allclose(drawn["aif_mM"], population["aif_mM"], atol=0.01)  # not the population curve
    for results in (drawn, population):
        assert results["fit"]["ktrans_per_min"] == pytest.approx(KTRANS, abs=0.005 + 0.1 * KTRANS)
        assert results["fit"]["ve"] == pytest.approx(VE, abs=0.05)
    assert drawn["fit"]["ktrans_per_min"] == pytest.approx(population["fit"]["ktrans_per_min"], rel=0.1)
    # An AIF region outside the image is refused, not fitted.
    outside = {"slice": 3, "polygon": [[0, 0], [2, 0], [2, 2]]}
    body = {"study": str(study.pk), "series": [str(s.pk) for s in series], "region": LESION, "aif": {"region": outside}}
    assert client.post("/api/v1/analysis/dce/regions/", body, format="json").status_code == 400


def test_a_curve_saved_as_a_key_image_is_a_secondary_capture_in_the_study(per_time_point, tenants, tmp_path):
    study, series = per_time_point
    client = api_client(tenants.a.radiologist)
    region = analyse(client, study, series, {"region": ARTERY})
    # Another institution cannot save it; nothing is stored for the attempt.
    assert (
        api_client(tenants.c.radiologist).post(f"/api/v1/analysis/dce/regions/{region['id']}/key-image/").status_code
        == 404
    )
    saved = client.post(f"/api/v1/analysis/dce/regions/{region['id']}/key-image/")
    assert saved.status_code == 201, saved.data
    assert saved.data["study_instance_uid"] == study.study_instance_uid

    # Found by QIDO-RS in the study, as a Secondary Capture.
    found = client.get(
        f"/dicomweb/studies/{study.study_instance_uid}/instances",
        {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"},
        HTTP_ACCEPT="application/dicom+json",
    )
    assert found.status_code == 200
    assert [item["00080018"]["Value"][0] for item in found.json()] == [saved.data["sop_instance_uid"]]

    instance = Instance.objects.get(pk=saved.data["instance"])
    with get_storage().open(instance.storage_key) as handle:
        ds = pydicom.dcmread(handle)
    assert ds.PatientName == "Zhang^San=张^三" and ds.StudyInstanceUID == study.study_instance_uid
    assert ds.SeriesDescription == "DCE-MRI curves" and "type" in ds.DerivationDescription
    # The plot is the pixels: the region's curve drawn in its colour, the AIF in its own.
    picture = ds.pixel_array
    assert picture.shape == (400, 640, 3)
    assert np.all(picture == np.array(TISSUE, dtype=np.uint8), axis=-1).sum() > 300
    assert np.all(picture == np.array((255, 80, 80), dtype=np.uint8), axis=-1).sum() > 300
    path = tmp_path / "curve.dcm"
    ds.save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    assert errors == [], checked.stderr

    key_image = KeyImage.objects.get(pk=saved.data["key_image"])
    assert (key_image.instance_id, key_image.user) == (instance.pk, tenants.a.radiologist)
    assert AuditEvent.objects.filter(action="analysis.dce.region.key_image", object_id=region["id"]).exists()
