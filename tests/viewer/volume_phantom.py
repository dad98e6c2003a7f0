"""A small synthetic CT for the 3D tests, with structures at known places and sizes.

Axial slices, rows running posterior (+y), columns to the patient's left (+x),
slices towards the head (+z). In (slice, row, column) voxels:

* body: an elliptic cylinder of 40 HU;
* spine: a 700 HU rod behind the centre (rows 82–94, columns 58–70), every slice;
* vessel: a 350 HU tube of radius 3 voxels curving left to right along the slices (``vessel_path``);
* lesion: a 150 HU sphere of radius ``LESION_RADIUS_MM`` centred at ``LESION_CENTRE`` (voxels);
* table: a 250 HU plate behind the body, separated from it by air (rows 110–113).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from viewer.mpr import Geometry, Volume

SHAPE = (64, 128, 128)  # slices, rows, columns
SPACING = (2.0, 0.8, 0.8)  # slice gap, row spacing, column spacing (mm)
SPINE_ROWS, SPINE_COLUMNS = (82, 94), (58, 70)
TABLE_ROWS = (110, 113)
LESION_CENTRE = (40, 40, 88)
LESION_RADIUS_MM = 8.0
VESSEL_ROW = 50
VESSEL_RADIUS = 3


def vessel_column(k: np.ndarray | float) -> np.ndarray | float:
    return 40 + 24 * np.sin(np.pi * np.asarray(k) / (SHAPE[0] - 1))


def vessel_path() -> list[tuple[float, float, float]]:
    """Points along the vessel's centre line, (slice, row, column) voxels."""
    return [(float(k), float(VESSEL_ROW), float(vessel_column(k))) for k in range(4, SHAPE[0] - 4, 6)]


def hounsfield(seed: int = 5) -> np.ndarray:
    k, r, c = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    hu = np.full(SHAPE, -1000, dtype=np.int16)
    hu[((r - 58) / 44.0) ** 2 + ((c - 64) / 54.0) ** 2 <= 1] = 40
    hu[(r >= SPINE_ROWS[0]) & (r <= SPINE_ROWS[1]) & (c >= SPINE_COLUMNS[0]) & (c <= SPINE_COLUMNS[1])] = 700
    hu[(r - VESSEL_ROW) ** 2 + (c - vessel_column(k)) ** 2 <= VESSEL_RADIUS**2] = 350
    lk, lr, lc = LESION_CENTRE
    gap, row, col = SPACING
    lesion = ((k - lk) * gap) ** 2 + ((r - lr) * row) ** 2 + ((c - lc) * col) ** 2 <= LESION_RADIUS_MM**2
    hu[lesion] = 150
    hu[(r >= TABLE_ROWS[0]) & (r <= TABLE_ROWS[1]) & (c >= 8) & (c <= 120)] = 250
    rng = np.random.default_rng(seed)
    return (hu + rng.integers(-5, 6, size=SHAPE)).astype(np.int16)


def volume(hu: np.ndarray | None = None) -> Volume:
    """The phantom as a decoded volume, without the archive (scene tests)."""
    hu = hounsfield() if hu is None else hu
    gap, row, col = SPACING
    geometry = Geometry(
        slices=[],
        row_direction=np.array([1.0, 0.0, 0.0]),
        column_direction=np.array([0.0, 1.0, 0.0]),
        normal=np.array([0.0, 0.0, 1.0]),
        rows=SHAPE[1],
        columns=SHAPE[2],
        row_spacing=row,
        column_spacing=col,
        slice_spacing=gap,
    )
    return Volume(data=hu, geometry=geometry, infos=[])


def datasets(hu: np.ndarray | None = None) -> list[Dataset]:
    """The phantom as CT Image Storage objects (one per slice) of one new study."""
    hu = hounsfield() if hu is None else hu
    gap, row, col = SPACING
    study_uid, series_uid = generate_uid(), generate_uid()
    result = []
    for index in range(SHAPE[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientSex = "Zhang^San=张^三", "PHANTOM-3D", "M"
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20260301", "091500", "CT chest phantom"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 3, "Phantom 3D"
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = ["0", "0", f"{-100 + gap * index:.3f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{row:g}", f"{col:g}"]
        ds.SliceThickness = f"{gap:g}"
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = (hu[index].astype(np.int32) + 1024).astype("<i2").tobytes()
        result.append(ds)
    return result
