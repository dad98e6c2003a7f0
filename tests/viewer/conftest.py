"""Helpers for the viewer tests: real files stored through the archive's ingest."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from archive.ingest import store_instance
from archive.models import Instance
from viewer import caches

from .phantom import ct_datasets


@pytest.fixture(autouse=True)
def _isolated_storage_and_caches(tmp_path, settings):
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


@pytest.fixture
def ct_volume(tenants, tmp_path):
    def make(institution=None, **options) -> CtVolume:
        datasets, hu = ct_datasets(**options)
        inst = institution or tenants.a.institution
        instances = [store(ds, inst, tmp_path) for ds in datasets]
        gap, pixel = options.get("gap", 2.5), options.get("pixel", 0.7)
        return CtVolume(instances, hu, (gap, pixel, pixel), datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)

    return make
