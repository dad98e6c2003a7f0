"""A synthetic CT volume built with numpy and pydicom, for MPR tests and the isolation harness."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


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
