"""Ingest rules a read depends on, one object each, in-process (the corpus tests send them over the network)."""

from __future__ import annotations

import io

import pydicom
import pytest

from archive.ingest import IngestError, IngestSession, Source, store_part10
from archive.models import Instance
from pacs_cloud.lib.uids import InvalidUID, is_conformant_uid, require_uid
from tests.attack.corpus import build


@pytest.fixture
def storage_dir(tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.DATA_DIR = tmp_path
    return tmp_path / "objects"


@pytest.mark.parametrize(
    ("uid", "conformant"),
    [("1.2.840.10008.1.2.1", True), ("1.0.2", True), ("1.2.03.4", False), ("0.1", True), ("01.2", False)],
)
def test_a_uid_with_a_leading_zero_component_does_not_conform(uid, conformant):
    assert is_conformant_uid(uid) is conformant
    if not conformant:
        with pytest.raises(InvalidUID, match="leading zero"):
            require_uid(uid, strict=True)
    assert require_uid(uid) == uid  # looking one up still accepts it


def store(tenants, case):
    return store_part10(case.data, institution=tenants.a.institution, session=IngestSession(Source("stow", "test")))


@pytest.mark.parametrize(
    ("sample", "mutation", "variant", "reason"),
    [
        ("CT_small.dcm", "bad_frames", 0, "NumberOfFrames|Number of Frames"),
        ("MR_small_implicit.dcm", "zero_rows", 0, "at least 1"),
        ("JPEG2000.dcm", "short_pixels", 0, "cut short"),  # a compressed fragment cut, its length kept
        ("MR_small_RLE.dcm", "truncated_pixels", 0, "cut short"),
        ("CT_small.dcm", "deep_nesting", 0, "nests sequences"),
        ("CT_small.dcm", "deflate_on_plain", 0, "not deflated"),
    ],
)
def test_an_object_a_read_could_not_use_is_refused_with_its_reason(
    tenants, storage_dir, sample, mutation, variant, reason
):
    with pytest.raises(IngestError, match=reason):
        store(tenants, build(sample, mutation, variant))
    assert not Instance.objects.exists()
    assert not list(storage_dir.rglob("*.dcm"))


@pytest.mark.parametrize("uid", ["1.2.03.4", "1.2.3\\1.2.4", "1.2.３.4"])
def test_a_study_uid_that_does_not_conform_is_refused(tenants, storage_dir, uid):
    ds = pydicom.dcmread(io.BytesIO(build("CT_small.dcm", "original").data))
    # pydicom writes UIDs as ASCII: a placeholder as long, then the bytes in its place.
    placeholder = "1." + "7" * (len(uid.encode()) - 2)
    ds.StudyInstanceUID = placeholder
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue().replace(placeholder.encode(), uid.encode())
    with pytest.raises(IngestError, match="Study Instance UID"):
        store_part10(data, institution=tenants.a.institution, session=IngestSession(Source("stow", "test")))
    assert not Instance.objects.exists()


def test_nan_values_are_stored_empty_in_the_metadata(tenants, storage_dir):
    case = build("CT_small.dcm", "nan_values")
    result = store(tenants, case)
    assert result.created
    assert "NaN" not in str(result.instance.metadata) and "nan" not in str(result.instance.metadata).lower()
