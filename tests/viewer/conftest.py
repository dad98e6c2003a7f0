"""Helpers for the viewer tests: real files stored through the archive's ingest."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.ingest import store_instance
from archive.models import Instance
from viewer import caches

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(autouse=True)
def _isolated_storage_and_caches(tmp_path, settings):
    # Hashing fifteen tenant passwords with Argon2 dominates every test's set-up.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    # Process-local caches: clearing them must never flush a shared Redis.
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "viewer-tests"},
        "render": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "viewer-tests-render"},
    }
    caches.clear_all()
    from django.core.cache import cache

    cache.clear()
    yield
    caches.clear_all()


def sample(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def with_new_uids(ds: Dataset, *, study: str | None = None, series: str | None = None) -> Dataset:
    """A copy of ``ds`` with fresh UIDs, so sample files never collide across tests."""
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = ds.get("PatientID") or "VIEWER-TEST"
    return ds


def store(ds: Dataset, institution, tmp_path: Path) -> Instance:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return store_instance(path, institution=institution).instance


def store_sample(name: str, institution, tmp_path: Path) -> Instance:
    return store(with_new_uids(sample(name)), institution, tmp_path)


@dataclass
class CtVolume:
    """A synthetic CT series and the HU volume it encodes (slices ascending in z)."""

    instances: list[Instance]
    hu: np.ndarray  # (slices, rows, columns), slice 0 at the lowest z
    spacing: tuple[float, float, float]  # slice, row, column (mm)
    study_uid: str
    series_uid: str


def ct_datasets(
    *,
    size: int = 64,
    slices: int = 40,
    pixel: float = 0.7,
    gap: float = 2.5,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    shuffle_numbers: bool = False,
    seed: int = 3,
) -> tuple[list[Dataset], np.ndarray]:
    """A small CT volume: body ellipse, a bright sphere off-centre and a bone rod, in HU.

    The volume is built in (k, r, c) index space; positions follow the given
    orientation so the same phantom can be acquired axially or sagittally.
    """
    rng = np.random.default_rng(seed)
    k, r, c = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    hu = np.full((slices, size, size), -1000, dtype=np.int16)
    body = ((r - size / 2) / (size * 0.42)) ** 2 + ((c - size / 2) / (size * 0.35)) ** 2 <= 1
    hu[body] = 40
    sphere = (k - slices * 0.7) ** 2 + ((r - size * 0.35) * pixel / gap) ** 2 + ((c - size * 0.6) * pixel / gap) ** 2
    hu[sphere <= 16] = 300
    rod = ((r - size * 0.7) ** 2 + (c - size * 0.5) ** 2 <= 9) & (k < slices // 2)
    hu[rod] = 1200
    hu = hu + rng.integers(-5, 6, size=hu.shape).astype(np.int16)
    row_dir = np.array(orientation[:3], dtype=float)
    col_dir = np.array(orientation[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    study_uid, series_uid = generate_uid(), generate_uid()
    numbers = list(range(1, slices + 1))
    if shuffle_numbers:
        rng.shuffle(numbers)
    datasets = []
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID, ds.PatientSex = "Phantom^Volume", "PHANTOM-1", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20240102", "101500", "CT phantom"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 2, "Phantom axial"
        ds.InstanceNumber = numbers[index]
        position = np.array([-size * pixel / 2, -size * pixel / 2, -100.0]) + normal * gap * index
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.PixelSpacing = [f"{pixel:g}", f"{pixel:g}"]
        ds.SliceThickness = f"{gap:g}"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
        ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
        ds.PixelData = (hu[index].astype(np.int16) + 1024).astype("<i2").tobytes()
        datasets.append(ds)
    return datasets, hu


@pytest.fixture
def ct_volume(tenants, tmp_path):
    def make(institution=None, **options) -> CtVolume:
        datasets, hu = ct_datasets(**options)
        inst = institution or tenants.a.institution
        instances = [store(ds, inst, tmp_path) for ds in datasets]
        gap, pixel = options.get("gap", 2.5), options.get("pixel", 0.7)
        return CtVolume(instances, hu, (gap, pixel, pixel), datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)

    return make
