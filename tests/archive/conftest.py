"""Fixtures of the archive tests: storage in a temporary folder, real sample files, data sets built in code."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# Real sample files, one per transfer syntax the archive must keep as received.
SAMPLES = {
    "explicit_le": ("CT_small.dcm", "1.2.840.10008.1.2.1"),
    "implicit_le": ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    "explicit_be": ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
    "deflated": ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    "rle": ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    "jpeg_baseline": ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
    "jpeg_extended": ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),
    "jpeg_lossless": ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),
    "jpeg_ls": ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
    "jpeg_2000_lossless": ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
    "jpeg_2000": ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
    "multiframe_rle": ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5"),
    "multiframe": ("emri_small.dcm", "1.2.840.10008.1.2.1"),  # pydicom-data, 10 frames
    "overlays": ("MR-SIEMENS-DICOM-WithOverlays.dcm", "1.2.840.10008.1.2.1"),  # pydicom-data
}
# storescu's option proposing each transfer syntax (dcmtk 3.6).
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}
CHINESE = {"iso_ir_192": "chrX1.dcm", "gb18030": "chrX2.dcm"}


def sample_path(name: str) -> Path:
    if name.startswith("chr"):
        return Path(get_charset_files(name)[0])
    return Path(get_testdata_file(name))


def dataset_offset(path: Path) -> int:
    """Where the data set starts in a Part 10 file (after the File Meta Information)."""
    from pynetdicom.dsutils import split_dataset

    return split_dataset(path)[1]


def dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[dataset_offset(path) :]


def with_fresh_uids(source: Path, target: Path, **changes: str) -> Path:
    """A copy of ``source`` in its own transfer syntax with new Study/Series/SOP UIDs (and ``changes``)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return target


def make_ct(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "P0001",
    patient_name: str = "DOE^JANE",
    birth_date: str = "19700101",
    sex: str = "F",
    accession: str = "ACC1",
    modality: str = "CT",
    instance_number: int = 1,
    size: int = 16,
    frames: int = 1,
    charset: str | None = None,
    study_date: str = "20240301",
    description: str = "CT CHEST",
    seed: int = 0,
) -> Dataset:
    """A small, valid CT image data set built in code (Explicit VR Little Endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.AccessionNumber = accession
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.StudyDescription = description
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AXIAL"
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(-1000, 1000, size=(frames, size, size), dtype=np.int16).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_part(ds: Dataset) -> bytes:
    """The data set as a C-STORE carries it: Explicit VR Little Endian, no File Meta Information."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def storage_dir(tmp_path, settings):
    """The archive's file storage in a folder of this test."""
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.DATA_DIR = tmp_path
    return tmp_path / "objects"


def dcmtk(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run a dcmtk tool with TCP_NODELAY, as the product's peers do."""
    return subprocess.run(
        list(args), capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=timeout
    )


def differences(first: Path | bytes, second: Path | bytes) -> list[str]:
    """Where two objects' data sets differ (File Meta and group lengths aside); [] when the same."""

    def load(source: Path | bytes) -> Dataset:
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, force=True)

    a, b = load(first), load(second)
    # Group lengths and Data Set Trailing Padding are dropped or added by senders at will.
    tags = {t for t in (*a.keys(), *b.keys()) if t.element != 0 and t.group != 2 and t != 0xFFFCFFFC}
    found = []
    for tag in sorted(tags):
        if tag not in a or tag not in b:
            found.append(f"{tag} only in {'first' if tag in a else 'second'}")
        elif a[tag].value != b[tag].value:
            found.append(f"{tag} {a[tag].keyword}: {str(a[tag].value)[:60]!r} != {str(b[tag].value)[:60]!r}")
    return found
