"""Semi-quantitative DCE analysis: curve types I, II, III and the descriptors of a curve, through the API."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import api_client

URL = "/api/v1/analysis/dce/enhancement/"
T = np.arange(0.0, 480.0, 10.0)  # 8 minutes, a frame every 10 s
ONSET = 50.0


def _after(seconds: np.ndarray) -> np.ndarray:
    return np.clip(seconds - ONSET, 0.0, None)


def persistent() -> np.ndarray:
    """Type I: keeps rising to the last frame (benign pattern)."""
    return 100.0 + 120.0 * (1.0 - np.exp(-_after(T) / 180.0))


def plateau() -> np.ndarray:
    """Type II: a fast rise, then flat within ±10 %."""
    return 100.0 + 150.0 * (1.0 - np.exp(-_after(T) / 25.0))


def washout() -> np.ndarray:
    """Type III: a fast rise to an early peak, then a fall (suspicious for malignancy)."""
    x = _after(T)
    return 100.0 + 260.0 * (np.exp(-x / 300.0) - np.exp(-x / 20.0))


@pytest.fixture
def client(tenants):
    return api_client(tenants.a.radiologist)


@pytest.mark.parametrize(
    ("curve", "expected"),
    [(persistent, "I"), (plateau, "II"), (washout, "III")],
    ids=["type-I-persistent", "type-II-plateau", "type-III-washout"],
)
def test_the_curve_type_is_recognised(client, curve, expected):
    answer = client.post(URL, {"t": T.tolist(), "signal": curve().tolist()}, format="json")
    assert answer.status_code == 200, answer.data
    assert answer.data["curve_type"] == expected
    assert answer.data["onset_s"] == pytest.approx(ONSET, abs=10.0)


def test_the_descriptors_of_a_washout_curve(client):
    signal = washout()
    concentration = (signal - 100.0) / 100.0  # stands in for mM
    answer = client.post(
        URL,
        {"t": T.tolist(), "signal": signal.tolist(), "baseline_points": 5, "concentration": concentration.tolist()},
        format="json",
    ).data
    peak = int(np.argmax(signal))
    assert answer["baseline"] == pytest.approx(100.0)
    assert answer["onset_s"] == ONSET
    assert answer["peak_time_s"] == T[peak]
    assert answer["time_to_peak_s"] == T[peak] - ONSET
    assert answer["max_enhancement_ratio_percent"] == pytest.approx(signal[peak] - 100.0, rel=1e-4)
    # The steepest rise is the first frame after the onset.
    assert answer["initial_slope_percent_per_min"] == pytest.approx((signal[6] - signal[5]) / 100 * 100 * 6, rel=1e-4)
    late_drop = (signal[peak] - signal[-1]) / signal[peak] * 100 / ((T[-1] - T[peak]) / 60)
    assert answer["washout_rate_percent_per_min"] == pytest.approx(late_drop, rel=1e-4)
    s1 = np.interp(ONSET + 90, T, signal)
    assert answer["signal_enhancement_ratio"] == pytest.approx((s1 - 100) / (signal[-1] - 100), rel=1e-4)
    assert answer["signal_enhancement_ratio"] > 1  # wash-out: the late signal is below the early one
    fine = np.linspace(ONSET, ONSET + 60, 6001)
    assert answer["iauc60"] == pytest.approx(np.trapezoid(np.interp(fine, T, concentration), fine), rel=1e-3)
    assert answer["curve_type_label"] == "wash-out"


def test_a_curve_without_enhancement_has_no_onset_or_type(client):
    flat = 100.0 + np.random.default_rng(3).normal(0, 1, T.size)
    answer = client.post(URL, {"t": T.tolist(), "signal": flat.tolist(), "baseline_points": 5}, format="json").data
    assert answer["onset_s"] is None and answer["curve_type"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"t": [0, 10, 20], "signal": [1, 2]}, "signal"),
        ({"t": [0, 10], "signal": [1, 2]}, "t"),
        ({"t": [0, 20, 10, 30], "signal": [1, 2, 3, 4]}, "t"),
        ({"t": [0, 10, 20, 30], "signal": [1, -2, 3, 4]}, "signal"),
        ({"t": [0, 10, 20, 30], "signal": [1, 2, 3, 4], "baseline_points": 4}, "baseline_points"),
        ({"t": [0, 10, 20, 30], "signal": [1, 2, 3, 4], "concentration": [0, 1]}, "concentration"),
    ],
    ids=[
        "lengths-differ",
        "too-short",
        "times-not-increasing",
        "negative-signal",
        "all-baseline",
        "concentration-length",
    ],
)
def test_bad_curves_are_refused_with_the_reason(client, body, field):
    answer = client.post(URL, body, format="json")
    assert answer.status_code == 400
    assert field in answer.data


def test_a_region_drawn_on_a_dynamic_series_has_the_curve_type_of_its_pixels(tenants, tmp_path):
    """Rows 0–3 enhance persistently, 4–7 reach a plateau, 8–11 wash out; a region on each is typed so."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from archive.ingest import store_instance
    from archive.models import Series

    size = 12
    bands = np.stack([persistent(), plateau(), washout()])  # (3, phases)
    images = np.repeat(bands, 4, axis=0)[:, None, :] * np.ones((1, size, 1))  # (rows, columns, phases)
    study_uid, series_uid, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    for p, seconds in enumerate(T):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_of_reference
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.Modality = "Li^Si=李^四", "DCE-TYPES", "MR"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 5, p + 1, "DCE types"
        ds.TemporalPositionIdentifier, ds.NumberOfTemporalPositions = p + 1, len(T)
        ds.TriggerTime = float(seconds * 1000.0)
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], size, size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.rint(images[..., p]).astype(np.uint16).tobytes()
        path = tmp_path / f"p{p:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        store_instance(path, institution=tenants.a.institution)
    series = Series.objects.get(series_instance_uid=series_uid)
    client = api_client(tenants.a.radiologist)
    found = {}
    for label, top in (("I", 0), ("II", 4), ("III", 8)):
        region = {"slice": 0, "polygon": [[2, top], [9, top], [9, top + 3], [2, top + 3]]}
        body = {"study": str(series.study_id), "series": [str(series.pk)], "region": region, "label": label}
        answer = client.post("/api/v1/analysis/dce/regions/", body, format="json")
        assert answer.status_code == 201, answer.data
        found[label] = answer.data["results"]["enhancement"]["curve_type"]
    assert found == {"I": "I", "II": "II", "III": "III"}
