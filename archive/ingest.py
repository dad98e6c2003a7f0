"""The one ingest service every entry point uses (C-STORE, STOW-RS, media import, edge).

``store_instance`` (a file) and ``store_dataset`` (an encoded data set, as a
C-STORE delivers it) parse and validate one SOP instance, store its bytes
durably, index it in one transaction and announce it after commit. When they
return, the object is durable and indexed; a caller may acknowledge it. When
they raise :class:`IngestError`, nothing was indexed and nothing archived was
touched.

What is stored: a Part 10 file made of our own File Meta Information (always
the same for a given SOP instance and transfer syntax) and the data set
exactly as sent, in the transfer syntax it was sent in. So an identical
re-send has an identical SHA-256 and is recognised without a second copy.

Validation, in order: size limit; a readable data set that is not cut short;
well-formed Study, Series, SOP Instance and SOP Class UIDs (they make the
storage key); not a DICOMDIR; then against what is archived for the
institution: the same SOP Instance UID with other bytes is a conflict (the
new object is kept aside for review, never over the archived one), and so
is an object whose patient is born after today at the institution; a study
belongs to one patient (ID, issuer, name, birth date and sex as first
received); a series belongs to one study and has one modality; a patient's
birth date and sex do not change between studies.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import logging
import math
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydicom
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs_cloud import audit, metering
from pacs_cloud.lib import dicom_datetime
from pacs_cloud.lib.uids import InvalidUID, is_valid_uid, require_uid
from pacs_cloud.metering.models import Metric
from pacs_cloud.models import Institution

from . import names, signals
from .copies.index import COPY_INSERT, copy_params
from .models import NATIONAL_ID_ISSUERS, NON_IMAGE_MODALITIES, IngestConflict, Instance, Patient, Series, Study
from .storage import CACHE, CHUNK, STORED, TieredStorage, get_storage, object_key

log = logging.getLogger(__name__)

# Our implementation's identity in the File Meta Information we write
# (PS3.10 §7.1). Constant, so re-sends give identical objects.
IMPLEMENTATION_CLASS_UID = "2.25.119386521245310906211349427117396815061"
IMPLEMENTATION_VERSION_NAME = "CLOUDPACS_1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR (PS3.4 Annex F)
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian}
# Elements larger than this go to WADO-RS bulk data instead of inline metadata.
BULK_DATA_THRESHOLD = 64 * 1024
# From this size on, a received data set is hashed and written out while it is parsed.
EARLY_WRITE_BYTES = 4 * 1024 * 1024
# Pixel Data, Float Pixel Data, Double Float Pixel Data
PIXEL_DATA_TAGS = frozenset({BaseTag(0x7FE00010), BaseTag(0x7FE00008), BaseTag(0x7FE00009)})


# How a refusal for size begins (Failure Reason 0xA700, out of resources): a sender
# tells it from a passing shortage, as it will never be stored however often sent.
TOO_LARGE = "too large:"


def too_large_reason(size: int, limit: int) -> str:
    return f"{TOO_LARGE} {size} bytes, over the {limit}-byte limit for one instance"


class IngestError(Exception):
    """The instance was refused; ``reason`` is shown to the sender.

    ``code`` names the kind of refusal: ``too_large``, ``unreadable``,
    ``truncated``, ``bad_uid``, ``not_an_image``, ``conflict``,
    ``inconsistent``, ``wrong_study``, ``storage``.
    """

    def __init__(
        self, reason: str, *, code: str = "invalid", sop_instance_uid: str = "", sop_class_uid: str = ""
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.sop_instance_uid = sop_instance_uid
        self.sop_class_uid = sop_class_uid


@dataclass
class StoreResult:
    instance: Instance
    created: bool  # False: the identical object was already archived
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclass
class Source:
    """Who sent an object: shown in the audit trail and on conflicts."""

    via: str  # "dimse", "stow", "import", "edge"
    label: str  # e.g. "RIVERSIDE_CT", a username
    actor: Any = None  # the user, when a person sent it
    address: str = ""

    def __str__(self) -> str:
        return f"{self.via}:{self.label}"


@dataclass
class IngestSession:
    """State kept across the instances of one association, request or import.

    It remembers the patient, study and series rows it resolved, so a
    300-slice series costs one lookup instead of 300, and which studies were
    already audited in this session. Consistency checks still compare every
    instance with what the first one established.
    """

    source: Source
    studies: dict[str, _StudyRef] = field(default_factory=dict)
    audited: set[str] = field(default_factory=set)
    # DICOM JSON of element values already seen in this session (see json_metadata):
    # the patient, study and series attributes repeated by every instance of a series.
    metadata_parts: dict[tuple, dict] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    # When a list: what stored instances announce (signals, copies) is
    # collected here instead of run at once, for the caller to run once it
    # has answered the sender (:func:`announce_deferred`). Either way it
    # runs only after the instance is durable and indexed.
    deferred: list[Callable[[], Any]] | None = None
    # Storage keys written for objects whose index rows did not survive (a
    # failed insert, a rolled-back transaction): removed by discard_unindexed.
    unindexed: list[str] = field(default_factory=list)


@dataclass
class _StudyRef:
    study_pk: Any
    patient_pk: Any
    received_patient: dict[str, str]
    series: dict[str, tuple[Any, str]] = field(default_factory=dict)  # uid -> (pk, modality)


# Reading ---------------------------------------------------------------------


@dataclass
class _Object:
    """One object to archive: our header plus the data set bytes as sent."""

    transfer_syntax: str
    header: bytes
    dataset_bytes: bytes | None = None  # in memory (C-STORE) ...
    path: Path | None = None  # ... or in a file, from ``offset``
    offset: int = 0
    size: int = 0
    sha256: str = ""
    staged: Future | None = None  # a staging write already under way (C-STORE)

    def chunks(self) -> Iterator[bytes]:
        yield self.header
        if self.dataset_bytes is not None:
            yield self.dataset_bytes
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            yield from iter(lambda: handle.read(CHUNK), b"")


def _short_element(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 2-byte length (PS3.5 §7.1.2)."""
    return struct.pack("<HH", group_element >> 16, group_element & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def file_meta_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and our File Meta Information group (PS3.10 §7.1).

    Encoded by hand (it is written once per stored instance): the same bytes
    pydicom's ``write_file_meta_info`` produces, about twenty times faster.
    """
    version = IMPLEMENTATION_VERSION_NAME.encode("ascii")
    body = b"".join(
        (
            struct.pack("<HH", 0x0002, 0x0001) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01",
            _short_element(0x00020002, b"UI", _uid_value(sop_class_uid)),
            _short_element(0x00020003, b"UI", _uid_value(sop_instance_uid)),
            _short_element(0x00020010, b"UI", _uid_value(transfer_syntax)),
            _short_element(0x00020012, b"UI", _uid_value(IMPLEMENTATION_CLASS_UID)),
            _short_element(0x00020013, b"SH", version + b" " if len(version) % 2 else version),
        )
    )
    group_length = _short_element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _looks_like_dicom(fp: Any) -> bool:
    """A Part 10 file (``DICM`` at 128), or a bare data set starting with group 0002 or 0008."""
    start = fp.tell()
    head = fp.read(132)
    fp.seek(start)
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    little, big = int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")
    return little in (0x0002, 0x0008) or big in (0x0002, 0x0008)


# What pydicom raises on malformed bytes, besides its own InvalidDicomError:
# a bad length (struct.error, OverflowError, BytesLengthException), an unknown VR (NotImplementedError), Deflate declared on plain
# data (zlib.error), undecodable text (UnicodeError is a ValueError), a
# sequence nested past the interpreter's limit (RecursionError).
MALFORMED = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    ValueError,
    OSError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    NotImplementedError,
    OverflowError,
    RecursionError,
    struct.error,
    zlib.error,
)
# Deepest nesting of sequences accepted: real objects nest a few levels;
# reading, rendering and JSON all recurse once per level.
MAX_SEQUENCE_DEPTH = 32


def _malformed(what: str, exc: BaseException) -> IngestError:
    if isinstance(exc, RecursionError):
        return IngestError(f"{what} nests sequences too deeply to be read", code="unreadable")
    if isinstance(exc, EOFError):
        return IngestError(f"{what} is cut short: {exc}", code="truncated")
    if isinstance(exc, zlib.error):
        return IngestError(f"{what} is not deflated as its transfer syntax says: {exc}", code="unreadable")
    return IngestError(f"{what} is not a readable DICOM data set: {type(exc).__name__}: {exc}", code="unreadable")


def _parse(fp: Any, what: str) -> pydicom.Dataset:
    if not _looks_like_dicom(fp):
        raise IngestError(f"{what} is not DICOM (no DICM marker and no data set)", code="unreadable")
    try:
        ds = pydicom.dcmread(fp, defer_size=BULK_DATA_THRESHOLD, force=True)
    except MALFORMED as exc:
        raise _malformed(what, exc) from exc
    if len(ds) == 0 or not any(tag.group > 2 for tag in ds.keys()):
        raise IngestError(f"{what} holds no DICOM data set", code="unreadable")
    return ds


def _syntax_of(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax:
        return syntax
    # A bare data set without File Meta Information: what pydicom found.
    if getattr(ds, "is_little_endian", True) is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if getattr(ds, "is_implicit_VR", True) else ExplicitVRLittleEndian


def _check_complete(
    ds: pydicom.Dataset, available: int, header_shift: int, fp: Any = None
) -> tuple[int | None, int | None]:
    """Refuse a data set cut short or whose pixel data a read could not use.

    Returns the Pixel Data value's offset and length in the object (native
    pixel data of defined length), else ``(None, None)``.
    """
    last = max(ds._dict.values(), key=lambda e: getattr(e, "value_tell", -1) or -1, default=None)
    last_length = getattr(last, "length", None)
    last_tell = getattr(last, "value_tell", None)
    if last_tell is not None and last_length is not None and last_length != 0xFFFFFFFF:
        # pydicom keeps what there is of a value cut short by the end of the data.
        if last_tell + last_length > available:
            raise IngestError(
                f"the data set is cut short: ({last.tag.group:04X},{last.tag.element:04X}) needs "  # type: ignore[union-attr]
                f"{last_length} bytes, {max(0, available - last_tell)} present",
                code="truncated",
            )
    for tag in PIXEL_DATA_TAGS:
        element = ds._dict.get(tag)
        if element is None:
            continue
        length = getattr(element, "length", None)
        tell = getattr(element, "value_tell", None)
        if length is None or tell is None:
            _check_image(ds, element, None)
            return None, None
        if length == 0xFFFFFFFF:
            # Encapsulated: every fragment must be whole and the sequence closed.
            fragments = _count_fragments(fp, tell, available) if fp is not None else None
            _check_image(ds, element, fragments)
            return None, None
        if tell + length > available:
            raise IngestError(
                f"the data set is cut short: Pixel Data needs {length} bytes, {max(0, available - tell)} present",
                code="truncated",
            )
        _check_image(ds, element, None)
        expected = _native_pixel_bytes(ds)
        if expected and length < expected:
            raise IngestError(
                f"Pixel Data holds {length} bytes but Rows x Columns x Samples x Bits x Frames need {expected}",
                code="truncated",
            )
        return tell + header_shift, length
    return None, None


def _count_fragments(fp: Any, start: int, available: int) -> int:
    """Walk the items of an encapsulated Pixel Data value (PS3.5 A.4); the number of fragments after the offset table.

    Only the 8-byte item headers are read, so a large object costs a few seeks.
    """
    position, items = start, 0
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            raise IngestError("the data set is cut short: the compressed pixel data is not closed", code="truncated")
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return max(0, items - 1)  # the first item is the Basic Offset Table
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise IngestError(
                f"the compressed pixel data is malformed: ({group:04X},{element:04X}) where an item belongs",
                code="truncated",
            )
        position += 8 + length
        if position > available:
            raise IngestError(
                f"the data set is cut short: a compressed fragment needs {length} bytes, "
                f"{max(0, available - position + length)} present",
                code="truncated",
            )
        items += 1


def _image_attribute(ds: pydicom.Dataset, keyword: str) -> int | None:
    """A single-valued integer image attribute, None if absent; refuses a malformed one."""
    try:
        value = ds.get(keyword)
    except MALFORMED as exc:
        raise IngestError(f"{keyword} is malformed: {exc}", code="unreadable") from exc
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        raise IngestError(f"{keyword} has {len(value)} values, an image has one", code="unreadable")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise IngestError(f"{keyword} {str(value)[:20]!r} is not a whole number", code="unreadable") from exc
    return number


def _check_image(ds: pydicom.Dataset, pixel_element: Any, fragments: int | None) -> None:
    """The image attributes a read needs are there and agree with the pixel data (PS3.3 C.7.6.3)."""
    frames = _image_attribute(ds, "NumberOfFrames")
    if frames is not None and not 1 <= frames <= 2**31 - 1:
        raise IngestError(f"Number of Frames {frames} is not a positive number", code="unreadable")
    if pixel_element is None:
        return
    if getattr(pixel_element, "length", 1) == 0:
        return  # an empty Pixel Data: nothing to read
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        value = _image_attribute(ds, keyword)
        if value is None or value < 1:
            raise IngestError(f"an image with Pixel Data needs {keyword} of at least 1, not {value}", code="unreadable")
    samples = _image_attribute(ds, "SamplesPerPixel")
    if samples is not None and samples not in (1, 3, 4):
        raise IngestError(f"Samples per Pixel {samples} is not 1, 3 or 4", code="unreadable")
    if fragments is not None:
        if fragments == 0:
            raise IngestError("the compressed pixel data holds no fragment", code="truncated")
        if frames is not None and fragments < frames:
            raise IngestError(
                f"the compressed pixel data holds {fragments} fragments for {frames} frames", code="truncated"
            )


def _native_pixel_bytes(ds: pydicom.Dataset) -> int:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return 0
    total_bits = rows * columns * samples * bits * frames
    return (total_bits + 7) // 8


def _read_elements(fp: Any, what: str, size: int, header_shift: int) -> tuple[pydicom.Dataset, int | None, int | None]:
    ds = _parse(fp, what)
    deflated = _syntax_of(ds) == DeflatedExplicitVRLittleEndian
    try:
        # Offsets first, while Pixel Data is still a raw element that knows where it is.
        offset, length = (None, None) if deflated else _check_complete(ds, size, header_shift, fp)
        _read_every_element(ds, what)
        if deflated:
            _check_image(ds, ds._dict.get(BaseTag(0x7FE00010)), None)
    except MALFORMED as exc:
        raise _malformed(what, exc) from exc
    return ds, offset, length


def _read_bare(dataset: bytes, transfer_syntax: str) -> tuple[pydicom.Dataset, int | None, int | None]:
    """Parse a data set as a C-STORE delivers it (no File Meta); offsets are within ``dataset``."""
    syntax = UID(transfer_syntax)
    try:
        ds = read_dataset(io.BytesIO(dataset), syntax.is_implicit_VR, syntax.is_little_endian)
        # The elements as read, before any is converted: json_metadata knows them by their bytes.
        ds._raw_elements = dict(ds._dict)
    except MALFORMED as exc:
        raise _malformed("the data set", exc) from exc
    if not any(tag.group > 2 for tag in ds.keys()):
        raise IngestError(
            "the data set holds no readable element: it is empty, cut short or malformed"
            if dataset
            else "the data set is empty",
            code="unreadable",
        )
    try:
        offset, length = _check_complete(ds, len(dataset), 0, io.BytesIO(dataset))
        _read_every_element(ds, "the data set", sequences_only=True)
    except MALFORMED as exc:
        raise _malformed("the data set", exc) from exc
    return ds, offset, length


def _read_every_element(ds: pydicom.Dataset, what: str, sequences_only: bool = False) -> None:
    try:
        # Convert every element but pixel data once: pydicom parses lazily and
        # a cut-short or malformed value shows up only when read. (A data set
        # from a C-STORE was parsed whole already; only its sequences are
        # parsed lazily.)
        for tag, raw in list(ds._dict.items()):
            if tag in PIXEL_DATA_TAGS or (sequences_only and raw.VR != "SQ"):
                continue
            element = ds[tag]
            if element.VR == "SQ":
                _read_sequence(element, what)
    except IngestError:
        raise
    except MALFORMED as exc:
        if isinstance(exc, EOFError | RecursionError):
            raise _malformed(what, exc) from exc
        raise IngestError(f"{what} has a malformed element: {type(exc).__name__}: {exc}", code="unreadable") from exc


def _read_sequence(sequence: Any, what: str) -> None:
    """Read every element inside a sequence, level by level (no recursion), refusing deep nesting."""
    pending = [(sequence, 1)]
    while pending:
        element, depth = pending.pop()
        if depth > MAX_SEQUENCE_DEPTH:
            raise IngestError(f"{what} nests sequences more than {MAX_SEQUENCE_DEPTH} levels deep", code="unreadable")
        for item in element.value:
            for tag in list(item._dict):
                nested = item[tag]
                if nested.VR == "SQ":
                    pending.append((nested, depth + 1))


def _require_uids(ds: pydicom.Dataset) -> tuple[str, str, str, str]:
    """The Study, Series, SOP Instance and SOP Class UIDs: each present, single-valued and conformant."""
    keywords = (
        ("StudyInstanceUID", "Study Instance UID"),
        ("SeriesInstanceUID", "Series Instance UID"),
        ("SOPInstanceUID", "SOP Instance UID"),
        ("SOPClassUID", "SOP Class UID"),
    )
    found = []
    try:
        for keyword, what in keywords:
            found.append(require_uid(_single_uid(ds, keyword, what), what, strict=True))
    except InvalidUID as exc:
        sop = _text(ds, "SOPInstanceUID")
        raise IngestError(str(exc), code="bad_uid", sop_instance_uid=sop if is_valid_uid(sop) else "") from exc
    return found[0], found[1], found[2], found[3]


def _single_uid(ds: pydicom.Dataset, keyword: str, what: str) -> str:
    try:
        value = ds.get(keyword, "")
    except MALFORMED as exc:
        raise InvalidUID(f"{what} cannot be read: {exc}") from exc
    if isinstance(value, pydicom.multival.MultiValue):
        if len(value) != 1:
            raise InvalidUID(f"{what} has {len(value)} values; it must have one")
        value = value[0]
    return str(value if value is not None else "").strip().strip("\x00")


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except MALFORMED:  # converted lazily: an unknown VR or a bad length shows up here
        return ""
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else ""
    # (A NUL inside a value is kept by no database text column.)
    return str(value).replace("\x00", "").strip()


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0] if len(value) else None
        return int(value) if value not in (None, "") else None
    except MALFORMED:
        return None


def _safe_date(ds: pydicom.Dataset, keyword: str) -> Any:
    try:
        return dicom_datetime.parse_da(_text(ds, keyword))
    except dicom_datetime.InvalidDicomDateTime:
        return None


def _safe_time(ds: pydicom.Dataset, keyword: str) -> Any:
    try:
        return dicom_datetime.parse_tm(_text(ds, keyword).split("+")[0].split("-")[0])
    except dicom_datetime.InvalidDicomDateTime:
        return None


def json_metadata(ds: pydicom.Dataset, known: dict[tuple, dict] | None = None) -> dict:
    """DICOM JSON (PS3.18 F.2) of the data set; bulk data become empty BulkDataURIs.

    Pixel data is always bulk data, other binary values from 64 KiB on.
    WADO-RS fills the URIs in on the way out (they depend on the request's
    base URL). Unreadable elements are left out rather than failing the store.

    ``known`` (an ingest session's) maps an element as received (tag, VR,
    value bytes, in the data set's encoding and character set) to its JSON:
    the instances of a series repeat most of their elements byte for byte,
    and only the others are converted.
    """
    raw_elements = getattr(ds, "_raw_elements", None)
    if known is not None and raw_elements is not None:
        return _json_metadata_reusing(ds, raw_elements, known)
    pixel = {tag: ds._dict.pop(tag) for tag in PIXEL_DATA_TAGS if tag in ds._dict}
    try:
        result = _to_json(ds)
    finally:
        ds._dict.update(pixel)
    for tag, element in pixel.items():
        result[f"{tag:08X}"] = {"vr": element.VR or "OB", "BulkDataURI": ""}
    return dict(sorted(result.items()))


# Values up to this size are remembered by an ingest session (a series' repeated attributes are short).
_REUSED_VALUE_BYTES = 1024
_REUSED_ELEMENTS_LIMIT = 20_000


def _json_metadata_reusing(ds: pydicom.Dataset, raw_elements: dict, known: dict[tuple, dict]) -> dict:
    charset = raw_elements.get(BaseTag(0x00080005))
    context = (ds.original_encoding, charset.value if charset is not None else None)
    result: dict[str, Any] = {}
    missing = pydicom.Dataset()
    keys: dict[str, tuple] = {}
    for tag, raw in raw_elements.items():
        if tag in PIXEL_DATA_TAGS:
            continue
        name = f"{tag:08X}"
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and raw.VR != "SQ" and len(value) <= _REUSED_VALUE_BYTES:
            key = (context, tag, raw.VR, value)
            part = known.get(key)
            if part is not None:
                result[name] = {k: list(v) if isinstance(v, list) else v for k, v in part.items()}
                continue
            keys[name] = key
        try:
            missing.add(ds[tag])
        except MALFORMED:
            log.info("left %s out of the metadata of %s", tag, _text(ds, "SOPInstanceUID"))
    converted = _to_json(missing)
    if len(known) > _REUSED_ELEMENTS_LIMIT:
        known.clear()
    for name, part in converted.items():
        result[name] = part
        if name in keys:
            known[keys[name]] = {k: list(v) if isinstance(v, list) else v for k, v in part.items()}
    for tag in PIXEL_DATA_TAGS:
        element = ds._dict.get(tag)
        if element is not None:
            result[f"{tag:08X}"] = {"vr": element.VR or "OB", "BulkDataURI": ""}
    return dict(sorted(result.items()))


def _to_json(ds: pydicom.Dataset) -> dict:
    def bulk(element: Any) -> str:
        return ""

    try:
        return _storable(ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk))
    except MALFORMED:
        result = {}
        for element in ds:
            try:
                result.update(
                    pydicom.Dataset({element.tag: element}).to_json_dict(
                        bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk
                    )
                )
            except MALFORMED:
                log.info("left %s out of the metadata of %s", element.tag, _text(ds, "SOPInstanceUID"))
        return _storable(result)


def _storable(element_map: dict) -> dict:
    """DICOM JSON the database keeps: JSON has no NaN or infinity and PostgreSQL no NUL in text.

    A non-finite number (a DS of "NaN", an FD of infinity) becomes an empty
    value (PS3.18 F.2.5); NULs inside strings are dropped.
    """
    for element in element_map.values():
        values = element.get("Value") if isinstance(element, dict) else None
        if values:
            element["Value"] = [_storable_value(value) for value in values]
    return element_map


def _storable_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        if all(isinstance(part, str) for part in value.values()):  # a person name's groups
            return {key: _storable_value(part) for key, part in value.items()}
        return _storable(value)  # a sequence item
    return value


def metadata_of(instance: Instance) -> dict:
    """An instance's DICOM JSON metadata; computed from the stored object (and kept) if the index has none."""
    if instance.metadata:
        return instance.metadata
    from .copies.locations import reader

    with reader().open(instance.storage_key) as handle:
        ds = pydicom.dcmread(handle, defer_size=BULK_DATA_THRESHOLD, force=True)
        value = json_metadata(ds)
    Instance.objects.filter(pk=instance.pk).update(metadata=value)
    instance.metadata = value
    return value


def patient_module(ds: pydicom.Dataset) -> dict[str, str]:
    return {
        "PatientID": _text(ds, "PatientID")[:64],
        "IssuerOfPatientID": _text(ds, "IssuerOfPatientID")[:64],
        "PatientName": _text(ds, "PatientName"),
        "PatientBirthDate": _text(ds, "PatientBirthDate"),
        "PatientSex": _text(ds, "PatientSex").upper(),
    }


# Entry points ------------------------------------------------------------------


def store_instance(
    path: Path,
    *,
    institution: Institution,
    source: Source | None = None,
    session: IngestSession | None = None,
    only_study: str | None = None,
) -> StoreResult:
    """Archive the DICOM file at ``path`` (Part 10, or a bare data set) for ``institution``.

    With ``only_study``, an object of another study is refused (STOW-RS to
    ``/studies/{uid}``). Raises :class:`IngestError` for anything that must be
    refused; nothing is indexed then and nothing archived is touched.
    """
    path = Path(path)
    size = path.stat().st_size
    limit = settings.MAX_INSTANCE_BYTES
    if size > limit:
        named: pydicom.Dataset
        try:
            named = read_file_meta_info(path)
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, NotImplementedError):
            named = pydicom.Dataset()
        raise IngestError(
            too_large_reason(size, limit),
            code="too_large",
            sop_class_uid=str(named.get("MediaStorageSOPClassUID", "") or ""),
            sop_instance_uid=str(named.get("MediaStorageSOPInstanceUID", "") or ""),
        )
    offset = 0
    try:
        from pynetdicom.dsutils import split_dataset

        _, offset = split_dataset(path)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, NotImplementedError):
        offset = 0  # no preamble and File Meta Information: a bare data set
    with open(path, "rb") as handle:
        # Offsets come back as positions in this file; they move with the header below.
        ds, pixel_offset, pixel_length = _read_elements(handle, "the file", size, 0)
    try:
        meta = getattr(ds, "file_meta", None)
        media_class = str(getattr(meta, "MediaStorageSOPClassUID", ""))
        syntax = _syntax_of(ds)
        syntax_uid = UID(syntax)
        if not syntax_uid.is_transfer_syntax:
            raise IngestError(f"{syntax[:64]!r} is not a transfer syntax", code="unreadable")
    except MALFORMED as exc:
        raise _malformed("the file's File Meta Information", exc) from exc
    if "DirectoryRecordSequence" in ds or media_class == MEDIA_STORAGE_DIRECTORY:
        raise IngestError(
            "a DICOMDIR is a media directory, not an image: import the files it lists", code="not_an_image"
        )
    uids = _require_uids(ds)
    header = file_meta_header(uids[3], uids[2], syntax)
    obj = _Object(transfer_syntax=syntax, header=header, path=path, offset=offset)
    obj.size = len(header) + size - offset
    if pixel_offset is not None:
        pixel_offset += len(header) - offset
    digest = hashlib.sha256()
    for chunk in obj.chunks():
        digest.update(chunk)
    obj.sha256 = digest.hexdigest()
    session = session or IngestSession(source or Source("import", "file"))
    return _ingest(
        obj, ds, uids, pixel_offset, pixel_length, institution=institution, session=session, only_study=only_study
    )


def _meta_end(data: bytes) -> int | None:
    """Where the data set starts in a Part 10 file held in memory, from its group length; None if unsure."""
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    return 144 + struct.unpack("<I", data[140:144])[0]


def store_part10(
    data: bytes,
    *,
    institution: Institution,
    session: IngestSession,
    only_study: str | None = None,
    spill_folder: Path | None = None,
) -> StoreResult:
    """Archive a Part 10 file held in memory (a STOW-RS part).

    The sender's File Meta Information names the transfer syntax and the SOP
    instance; the data set behind it goes the C-STORE way (:func:`store_dataset`).
    A file whose meta group cannot be read that simply is archived from a
    temporary file by :func:`store_instance`.
    """
    end = _meta_end(data)
    meta = None
    syntax = ""
    if end is not None and end <= len(data):
        try:
            meta = read_dataset(io.BytesIO(data[132:end]), False, True)
            syntax = str(meta.get("TransferSyntaxUID", "") or "")
            media_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
            media_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        except MALFORMED:
            meta = None
    if meta is None or not syntax or end is None:
        import tempfile

        with tempfile.NamedTemporaryFile(dir=spill_folder, suffix=".dcm") as handle:
            handle.write(data)
            handle.flush()
            return store_instance(Path(handle.name), institution=institution, session=session, only_study=only_study)
    if media_class == MEDIA_STORAGE_DIRECTORY:
        raise IngestError(
            "a DICOMDIR is a media directory, not an image: import the files it lists", code="not_an_image"
        )
    return store_dataset(
        data[end:],
        transfer_syntax=syntax,
        institution=institution,
        session=session,
        sop_class_uid=media_class,
        sop_instance_uid=media_instance,
        only_study=only_study,
    )


def store_dataset(
    dataset: bytes,
    *,
    transfer_syntax: str,
    institution: Institution,
    session: IngestSession,
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
    only_study: str | None = None,
) -> StoreResult:
    """Archive one encoded data set (no File Meta Information) sent in ``transfer_syntax``.

    ``sop_class_uid`` and ``sop_instance_uid``, when given (a C-STORE's
    Affected SOP Class/Instance UID), must agree with the data set.
    """
    limit = settings.MAX_INSTANCE_BYTES
    if len(dataset) > limit:
        raise IngestError(
            too_large_reason(len(dataset), limit),
            code="too_large",
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
        )
    # The request names the SOP instance: our header is known before the data
    # set is parsed, so a large object's digest is computed on another core
    # meanwhile (hashlib lets go of the GIL). For an image of a usual size
    # (a 512x512 slice) the hand-offs between threads cost more than the
    # overlap saves on a busy machine: its digest is computed here.
    early = staged = None
    storage = get_storage()
    if len(dataset) >= EARLY_WRITE_BYTES and is_valid_uid(sop_class_uid) and is_valid_uid(sop_instance_uid):
        header = file_meta_header(sop_class_uid, sop_instance_uid, transfer_syntax)
        early = _hashers.submit(_sha256, header, dataset)
        if hasattr(storage, "stage"):
            # And written out to a staging file: once the key is known only
            # the rename and the fsyncs are left.
            staged = _writers.submit(storage.stage, [header, dataset])
    obj: _Object | None = None
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            # Inflating needs the Part 10 reader: parse the data set behind a provisional header.
            provisional = file_meta_header("1.2", "1.2", transfer_syntax)
            ds, _, _ = _read_elements(io.BytesIO(provisional + dataset), "the data set", 0, 0)
            pixel_offset = pixel_length = None
        else:
            ds, pixel_offset, pixel_length = _read_bare(dataset, transfer_syntax)
        uids = _require_uids(ds)
        if sop_instance_uid and sop_instance_uid != uids[2]:
            raise IngestError(
                f"the data set's SOP Instance UID {uids[2]} differs from the request's {sop_instance_uid}",
                code="inconsistent",
                sop_instance_uid=sop_instance_uid,
            )
        if sop_class_uid and sop_class_uid != uids[3]:
            raise IngestError(
                f"the data set's SOP Class UID {uids[3]} differs from the request's {sop_class_uid}",
                code="inconsistent",
                sop_instance_uid=uids[2],
            )
        if early is None:
            header = file_meta_header(uids[3], uids[2], transfer_syntax)
            digest = _sha256(header, dataset)
        else:
            digest = early.result()
        if pixel_offset is not None:
            pixel_offset += len(header)
        obj = _Object(transfer_syntax=transfer_syntax, header=header, dataset_bytes=dataset, staged=staged)
        obj.size = len(header) + len(dataset)
        obj.sha256 = digest
        return _ingest(
            obj, ds, uids, pixel_offset, pixel_length, institution=institution, session=session, only_study=only_study
        )
    except BaseException:
        # A refused object leaves nothing behind, its staging file included.
        leftover = obj.staged if obj is not None else staged
        if leftover is not None:
            _discard(leftover)
        raise


# The common path ---------------------------------------------------------------


def _ingest(
    obj: _Object,
    ds: pydicom.Dataset,
    uids: tuple[str, str, str, str],
    pixel_offset: int | None,
    pixel_length: int | None,
    *,
    institution: Institution,
    session: IngestSession,
    only_study: str | None = None,
) -> StoreResult:
    study_uid, series_uid, sop_uid, sop_class = uids
    try:
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            raise IngestError(
                "a DICOMDIR is a media directory, not an image: import the files it lists", code="not_an_image"
            )
        if only_study and study_uid != only_study:
            raise IngestError(f"the instance belongs to study {study_uid}, not {only_study}", code="wrong_study")
        birth_date = _safe_date(ds, "PatientBirthDate")
        if birth_date is not None and birth_date_in_future(institution, birth_date):
            reason = f"the patient's birth date {birth_date.isoformat()} is in the future"
            if not Instance.objects.filter(
                institution=institution, sop_instance_uid=sop_uid, sha256=obj.sha256
            ).exists():
                conflict = _keep_invalid_aside(obj, uids, institution, session.source, reason)
                raise IngestError(f"{reason}; kept aside for review (conflict {conflict.pk})", code="inconsistent")
        for attempt in range(2):
            _check_consistency(ds, uids, institution, session)
            # The key carries the content digest: an identical re-send lands on
            # the same key, different content on its own, never over another.
            key = object_key(institution.pk, study_uid, series_uid, sop_uid, version=obj.sha256[:16])
            storage = get_storage()
            location = CACHE if isinstance(storage, TieredStorage) else STORED
            # The object is written and fsynced in a writer thread while this
            # one indexes it: the two waits for the disk (the object's fsync,
            # the database's commit) overlap instead of adding up. The sender
            # hears "stored" only when both are durable; announcements wait
            # for both too. An object that could not be made durable has its
            # row taken back; one a crash left half-written is rewritten by
            # the sender's retry (an existing key is always rewritten).
            if obj.staged is not None:
                written = _writers.submit(_commit_staged, storage, obj.staged, key)
                obj.staged = None  # (a retry writes afresh)
            else:
                written = _writers.submit(storage.put_chunks, key, obj.chunks(), obj.sha256)
            try:
                instance = _new_instance(obj, ds, uids, key, location, pixel_offset, pixel_length, institution, session)
                announce = _index(instance, ds, uids, session)
            except _AlreadyIndexed:
                # Found by the insert itself rather than by a query before it:
                # one round trip less for every new instance.
                _wait_until_stored(written, key)
                return _already_archived(institution, sop_uid, obj, key, session)
            except IntegrityError:
                # Another sender indexed this SOP instance (or its study or
                # series) a moment ago: look again, once.
                _wait_until_stored(written, key)
                session.studies.pop(study_uid, None)
                if attempt:
                    session.unindexed.append(key)
                    if not transaction.get_connection().in_atomic_block:
                        discard_unindexed(session)
                    raise
                continue
            except BaseException as exc:
                # Nothing may stay in storage that the index does not know.
                exc.sop_instance_uid, exc.sop_class_uid = sop_uid, sop_class  # type: ignore[attr-defined]  # for refusal()
                _wait_quietly(written)
                session.unindexed.append(key)
                if not transaction.get_connection().in_atomic_block:
                    discard_unindexed(session)
                raise
            try:
                _wait_until_stored(written, key)
            except IngestError:
                _unindex(instance)
                raise
            if session.deferred is not None and not transaction.get_connection().in_atomic_block:
                session.deferred.extend(announce)
            else:
                for callback in announce:
                    transaction.on_commit(callback)
            session.stored += 1
            return StoreResult(instance, created=True, study_instance_uid=study_uid, series_instance_uid=series_uid)
        raise AssertionError("unreachable")
    except IngestError as exc:
        session.refused += 1
        exc.sop_instance_uid = exc.sop_instance_uid or sop_uid
        exc.sop_class_uid = exc.sop_class_uid or sop_class
        raise


def discard_unindexed(session: IngestSession) -> None:
    """Remove the objects written for index rows that did not survive, unless another row uses the same key.

    Call it where the transaction can be read again: after the failed
    statement's savepoint (or the request's transaction) was rolled back.
    """
    storage = get_storage()
    while session.unindexed:
        key = session.unindexed.pop()
        try:
            if (
                Instance.objects.filter(storage_key=key).exists()
                or IngestConflict.objects.filter(storage_key=key).exists()
            ):
                continue
            storage.delete(key)
        except Exception:  # the object stays; rebuild_index and verify_archive list it
            log.exception("could not remove %s, which the index does not know", key)


def refusal(exc: Exception) -> IngestError:
    """The refusal to answer for an unexpected failure while archiving one object (never a server error)."""
    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, DatabaseError):
        log.exception("an object could not be indexed")
        refused = IngestError(f"the archive could not index the object: {type(exc).__name__}", code="storage")
    elif isinstance(exc, MALFORMED):
        log.info("refused an object that could not be read", exc_info=True)
        refused = _malformed("the object", exc)
    else:
        log.exception("an object could not be archived")
        refused = IngestError(f"the object could not be archived: {type(exc).__name__}: {exc}", code="unreadable")
    refused.sop_instance_uid = getattr(exc, "sop_instance_uid", "")
    refused.sop_class_uid = getattr(exc, "sop_class_uid", "")
    return refused


def announce_deferred(session: IngestSession) -> None:
    """Run what the session's stored instances announce, collected since the last call."""
    while session.deferred:
        callback = session.deferred.pop(0)
        try:
            callback()
        except Exception:  # the instance is stored; a receiver's failure must not undo that
            log.exception("announcing a stored instance failed")


_writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="archive-store")
_hashers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="archive-hash")


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _discard(staged: Future) -> None:
    try:
        Path(staged.result()).unlink(missing_ok=True)
    except Exception:  # the staging write failed itself: nothing to remove
        log.debug("staging write failed", exc_info=True)


def _commit_staged(storage: Any, staged: Future, key: str) -> str:
    return storage.commit(staged.result(), key)


def _wait_quietly(written: Future) -> None:
    try:
        written.result()
    except Exception:  # the caller is already failing for another reason
        log.warning("an object write ended in error while its ingest failed", exc_info=True)


def _unindex(instance: Instance) -> None:
    """Take back the row of an object that could not be made durable (and its counts)."""
    with transaction.atomic():
        if Instance.objects.filter(pk=instance.pk).delete()[0]:
            Series.objects.filter(pk=instance.series_id).update(
                num_instances=F("num_instances") - 1, size_bytes=F("size_bytes") - instance.size
            )
            Study.objects.filter(series__pk=instance.series_id).update(
                num_instances=F("num_instances") - 1, size_bytes=F("size_bytes") - instance.size
            )
            modality = Series.objects.filter(pk=instance.series_id).values_list("modality", flat=True).first()
            if _non_image(modality or ""):
                Study.objects.filter(series__pk=instance.series_id).update(
                    non_image_instances=F("non_image_instances") - 1
                )


def _wait_until_stored(written: Future, key: str) -> None:
    try:
        written.result()
    except OSError as exc:
        log.exception("could not store %s", key)
        raise IngestError(f"the archive could not store the object: {exc}", code="storage") from exc


class _AlreadyIndexed(Exception):
    """The SOP Instance UID is indexed at the institution already (the insert did nothing)."""


def _already_archived(
    institution: Institution, sop_uid: str, obj: _Object, key: str, session: IngestSession
) -> StoreResult:
    """The identical object again (a duplicate: success), or other content (a conflict: refused)."""
    existing = Instance.objects.select_related("series__study").get(institution=institution, sop_instance_uid=sop_uid)
    if existing.sha256 == obj.sha256:
        session.duplicates += 1
        transaction.on_commit(lambda: signals.instance_stored.send(Instance, instance=existing, created=False))
        return StoreResult(
            existing,
            created=False,
            study_instance_uid=existing.series.study.study_instance_uid,
            series_instance_uid=existing.series.series_instance_uid,
        )
    conflict = _keep_aside(existing, obj, key, institution, session.source)
    raise IngestError(
        f"archived with other content; this one is kept aside for review (conflict {conflict.pk})",
        code="conflict",
        sop_instance_uid=sop_uid,
    )


def _keep_aside(existing: Instance, obj: _Object, key: str, institution: Institution, source: Source) -> IngestConflict:
    """Record the refused object (already durable under its own ``key``) for review."""
    study_uid = existing.series.study.study_instance_uid
    series_uid = existing.series.series_instance_uid
    storage = get_storage()
    if isinstance(storage, TieredStorage):
        # A conflict waits for review in the archive tier itself, not only in the cache.
        storage.copy_to_store(key, obj.sha256)
    return _open_conflict(
        "archive.instance.conflict",
        obj,
        key,
        institution,
        source,
        uids=(study_uid, series_uid, existing.sop_instance_uid),
        instance=existing,
    )


def _open_conflict(
    action: str,
    obj: _Object,
    key: str,
    institution: Institution,
    source: Source,
    *,
    uids: tuple[str, str, str],
    instance: Instance | None = None,
    reason: str = "",
) -> IngestConflict:
    """The open conflict for this object (one per content), audited when it is new."""
    study_uid, series_uid, sop_uid = uids
    with transaction.atomic():
        conflict, created = IngestConflict.objects.get_or_create(
            institution=institution,
            sop_instance_uid=sop_uid,
            sha256=obj.sha256,
            status=IngestConflict.Status.OPEN,
            defaults={
                "instance": instance,
                "reason": reason[:200],
                "study_instance_uid": study_uid,
                "series_instance_uid": series_uid,
                "transfer_syntax_uid": obj.transfer_syntax,
                "storage_key": key,
                "size": obj.size,
                "source": str(source)[:200],
            },
        )
        if created:
            detail = {"sop_instance_uid": sop_uid, "via": source.via}
            if reason:
                detail["reason"] = reason
            audit.record(
                action,
                actor=source.actor,
                actor_label=source.label,
                institution=institution,
                object_type="archive.ingestconflict",
                object_id=conflict.pk,
                address=source.address,
                outcome="failure",
                detail=detail,
            )
    return conflict


def birth_date_in_future(institution: Institution, birth_date: dt.date) -> bool:
    """Whether ``birth_date`` is after today at ``institution`` (in its time zone)."""
    return birth_date > timezone.now().astimezone(ZoneInfo(institution.time_zone)).date()


def _keep_invalid_aside(
    obj: _Object, uids: tuple[str, str, str, str], institution: Institution, source: Source, reason: str
) -> IngestConflict:
    """Keep an object refused for what it says (not for a clash) aside for review, unindexed."""
    study_uid, series_uid, sop_uid, _ = uids
    key = object_key(institution.pk, study_uid, series_uid, sop_uid, version=obj.sha256[:16])
    storage = get_storage()
    try:
        if obj.staged is not None:
            staged, obj.staged = obj.staged, None
            _commit_staged(storage, staged, key)
        else:
            storage.put_chunks(key, obj.chunks(), obj.sha256)
        if isinstance(storage, TieredStorage):
            storage.copy_to_store(key, obj.sha256)
    except OSError as exc:
        log.exception("could not keep %s aside", key)
        raise IngestError(f"the archive could not store the object: {exc}", code="storage") from exc
    return _open_conflict(
        "archive.instance.kept_aside",
        obj,
        key,
        institution,
        source,
        uids=(study_uid, series_uid, sop_uid),
        reason=reason,
    )


def _same_name(a: str, b: str) -> bool:
    first, second = names.name_forms(a), names.name_forms(b)
    for x, y in (
        (first.alphabetic, second.alphabetic),
        (first.ideographic, second.ideographic),
        (first.phonetic, second.phonetic),
    ):
        if x and y and x != y:
            return False
    return True


def _patient_mismatch(received: dict[str, str], incoming: dict[str, str]) -> str:
    """Which Patient attribute disagrees, or ''."""
    for keyword in ("PatientID", "IssuerOfPatientID"):
        if received.get(keyword, "") != incoming[keyword]:
            return keyword
    if not _same_name(received.get("PatientName", ""), incoming["PatientName"]):
        return "PatientName"
    for keyword in ("PatientBirthDate", "PatientSex"):
        if received.get(keyword) and incoming[keyword] and received[keyword] != incoming[keyword]:
            return keyword
    return ""


def _check_consistency(
    ds: pydicom.Dataset, uids: tuple[str, str, str, str], institution: Institution, session: IngestSession
) -> None:
    study_uid, series_uid, sop_uid, _ = uids
    incoming = patient_module(ds)
    ref = session.studies.get(study_uid) or _load_study_ref(institution, study_uid)
    if ref is not None:
        session.studies[study_uid] = ref
        wrong = "" if incoming == ref.received_patient else _patient_mismatch(ref.received_patient, incoming)
        if wrong:
            raise IngestError(
                f"study {study_uid} is archived for another patient: {wrong} is "
                f"{ref.received_patient.get(wrong, '')!r}, this instance says {incoming[wrong]!r}",
                code="inconsistent",
            )
        known = ref.series.get(series_uid)
        if known is None:
            known = _load_series(ref, series_uid)
        if known is not None:
            modality = _text(ds, "Modality")
            if known[1] and modality and known[1] != modality:
                raise IngestError(
                    f"series {series_uid} is archived with modality {known[1]}, this instance says {modality}",
                    code="inconsistent",
                )
            return
    other = (
        Series.objects.filter(study__institution=institution, series_instance_uid=series_uid)
        .exclude(study__study_instance_uid=study_uid)
        .values_list("study__study_instance_uid", flat=True)
        .first()
    )
    if other:
        raise IngestError(f"series {series_uid} is archived in another study ({other})", code="inconsistent")
    if ref is None:
        _check_patient(institution, incoming)


def _check_patient(institution: Institution, incoming: dict[str, str]) -> None:
    """A new study for a known patient: birth date and sex must not change."""
    if not incoming["PatientID"]:
        return
    patient = Patient.objects.filter(
        institution=institution, patient_id=incoming["PatientID"], issuer=patient_issuer(institution, incoming)
    ).first()
    if patient is None:
        return
    stored_birth = dicom_datetime.format_da(patient.birth_date)
    forms = [{"PatientBirthDate": stored_birth, "PatientSex": patient.sex}, *patient.received_forms]
    for keyword in ("PatientBirthDate", "PatientSex"):
        value = incoming[keyword]
        known = [form.get(keyword, "") for form in forms if form.get(keyword, "")]
        if value and known and value not in known:
            raise IngestError(
                f"patient {incoming['PatientID']} is archived with {keyword} {known[0]!r}, "
                f"this instance says {value!r}",
                code="inconsistent",
            )


def _load_study_ref(institution: Institution, study_uid: str) -> _StudyRef | None:
    row = (
        Study.objects.filter(institution=institution, study_instance_uid=study_uid)
        .values("pk", "patient_id", "received_patient")
        .first()
    )
    if row is None:
        return None
    return _StudyRef(row["pk"], row["patient_id"], row["received_patient"] or {})


def _load_series(ref: _StudyRef, series_uid: str) -> tuple[Any, str] | None:
    row = Series.objects.filter(study_id=ref.study_pk, series_instance_uid=series_uid).values("pk", "modality").first()
    if row is None:
        return None
    ref.series[series_uid] = (row["pk"], row["modality"])
    return ref.series[series_uid]


def patient_issuer(institution: Institution, received: dict[str, str]) -> str:
    """The issuer a received Patient ID belongs to.

    Modalities often drop the Issuer of Patient ID (0010,0021) the worklist
    gave them; an ID without one was assigned by the receiving institution,
    so it names the patient registered there rather than a second record.
    """
    return received["IssuerOfPatientID"] or institution.patient_id_issuer


def _anonymous_issuer(study_uid: str) -> str:
    # A data set without a Patient ID gets a patient of its own per study,
    # rather than joining every other unidentified study.
    return "no-patient-id:" + hashlib.sha1(study_uid.encode(), usedforsecurity=False).hexdigest()[:32]


def _new_instance(
    obj: _Object,
    ds: pydicom.Dataset,
    uids: tuple[str, str, str, str],
    key: str,
    location: str,
    pixel_offset: int | None,
    pixel_length: int | None,
    institution: Institution,
    session: IngestSession | None = None,
) -> Instance:
    """The index row of a new object (not saved), its DICOM JSON metadata included."""
    _, _, sop_uid, sop_class = uids
    return Instance(
        institution=institution,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        instance_number=_int(ds, "InstanceNumber"),
        transfer_syntax_uid=obj.transfer_syntax,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_allocated=_int(ds, "BitsAllocated"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        size=obj.size,
        sha256=obj.sha256,
        storage_key=key,
        location=location,
        pixel_data_offset=pixel_offset,
        pixel_data_length=pixel_length,
        metadata=json_metadata(ds, session.metadata_parts if session is not None else None),
        received_at=timezone.now(),
    )


def _index(
    instance: Instance, ds: pydicom.Dataset, uids: tuple[str, str, str, str], session: IngestSession
) -> list[Callable[[], Any]]:
    """Index an object: its study and series (created if new), its row, the counts and the audit.

    Returns what to announce (signals, the copy to the object store) once the
    object itself is durable.
    """
    announce: list[Callable[[], Any]] = []
    study_uid, series_uid, _, _ = uids
    institution = instance.institution
    study_created = False
    location = instance.location
    now = instance.received_at
    ref = session.studies.get(study_uid)
    series_ref = ref.series.get(series_uid) if ref is not None else None
    if ref is not None and series_ref is not None and study_uid in session.audited:
        # The usual case inside a series: its study and series rows are known
        # and the study's receipt is audited; index the instance and count it.
        instance.series_id = series_ref[0]
        if _non_image(series_ref[1]):
            with transaction.atomic():
                still_receiving = _insert_and_count(instance, ref.study_pk, now)
                Study.objects.filter(pk=ref.study_pk).update(non_image_instances=F("non_image_instances") + 1)
        else:
            still_receiving = _insert_and_count(instance, ref.study_pk, now)
    else:
        # A new study or series, or the first instance of this session: the
        # rows it needs are created (and the receipt audited) with the
        # instance, and remembered only once that has committed.
        with transaction.atomic():
            series_created = False
            if ref is None:
                ref, study_created = _get_or_create_study(ds, study_uid, institution, now)
            series_ref = ref.series.get(series_uid)
            if series_ref is None:
                series_ref, series_created = _get_or_create_series(ds, ref, series_uid, now)
            instance.series_id = series_ref[0]
            still_receiving = _insert_and_count(instance, ref.study_pk, now)
            if series_created:
                Study.objects.filter(pk=ref.study_pk).update(
                    num_series=F("num_series") + 1, modalities=_modalities_after(ref.study_pk, series_ref[1])
                )
            if _non_image(series_ref[1]):
                Study.objects.filter(pk=ref.study_pk).update(
                    non_image_series=F("non_image_series") + int(series_created),
                    non_image_instances=F("non_image_instances") + 1,
                )
            if study_uid not in session.audited:
                audit.record(
                    "archive.study.receive",
                    actor=session.source.actor,
                    actor_label=session.source.label,
                    institution=institution,
                    object_type="archive.study",
                    object_id=ref.study_pk,
                    patient_id=ref.received_patient.get("PatientID", ""),
                    address=session.source.address,
                    detail={"via": session.source.via, "study_instance_uid": study_uid, "new_study": study_created},
                )
            if study_created:
                study_pk = ref.study_pk
                announce.append(lambda: signals.study_received.send(Study, study=Study.objects.get(pk=study_pk)))
        ref.series[series_uid] = series_ref
        session.studies[study_uid] = ref
        session.audited.add(study_uid)
    instance._state.adding = False
    if not still_receiving:
        late_study = ref.study_pk
        announce.append(lambda: _reopen_if_complete(late_study, session.source))
    announce.append(
        lambda: signals.instance_stored.send(Instance, instance=instance, created=True, series_instance_uid=series_uid)
    )
    if location != STORED:
        announce.append(lambda: _schedule_copy(instance.pk))
    if session.source.via not in UNMETERED_SOURCES:
        announce.append(functools.partial(_meter, institution.pk, study_created))
    return announce


# Objects the archive made itself (a rebuilt index, a signed report's PDF) are not "received".
UNMETERED_SOURCES = frozenset({"rebuild", "report"})


def _meter(institution_pk: Any, new_study: bool) -> None:
    # An in-memory add: the counters are written in batches, off this path.
    metering.count_later(institution_pk, Metric.INSTANCES_RECEIVED)
    if new_study:
        metering.count_later(institution_pk, Metric.STUDIES_RECEIVED)


# Statements of the per-instance hot path. Only table and column names from
# the models are formatted in (never data); values are always parameters.
_INSTANCE_FIELDS = list(Instance._meta.concrete_fields)
_INSTANCE_COLUMNS = ", ".join(f'"{f.column}"' for f in _INSTANCE_FIELDS)
_INSTANCE_VALUES = ", ".join(["%s"] * len(_INSTANCE_FIELDS))
_INSERT_INSTANCE = (
    f"INSERT INTO {Instance._meta.db_table} ({_INSTANCE_COLUMNS}) VALUES ({_INSTANCE_VALUES}) ON CONFLICT DO NOTHING"  # noqa: S608
)
_COUNT_SERIES = (
    f"UPDATE {Series._meta.db_table} SET num_instances = num_instances + 1, size_bytes = size_bytes + %s WHERE id = %s"  # noqa: S608
)
_COUNT_STUDY = f"UPDATE {Study._meta.db_table} SET num_instances = num_instances + 1, size_bytes = size_bytes + %s, last_instance_at = %s WHERE id = %s"  # noqa: S608


_PREPARED = "archive_index_instance"


def _prepare(connection: Any, cursor: Any) -> None:
    """Prepare the hot-path statement once per database connection (PostgreSQL).

    Parsing and planning it on every instance would cost more than executing it.
    """
    raw = connection.connection
    if getattr(connection, "_archive_prepared_on", None) is raw:
        return
    inserted = " AND EXISTS (SELECT 1 FROM new_instance)"
    statement = (
        f"WITH new_instance AS ({_INSERT_INSTANCE} RETURNING 1), "
        f"counted_series AS ({_COUNT_SERIES}{inserted} RETURNING 1), "
        f"recorded_copy AS ({COPY_INSERT}{inserted} RETURNING 1) "
        f"{_COUNT_STUDY}{inserted} RETURNING state"
    )
    numbered = iter(range(1, statement.count("%s") + 1))
    cursor.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", [_PREPARED])
    if cursor.fetchone() is None:
        cursor.execute(f"PREPARE {_PREPARED} AS " + re.sub("%s", lambda _: f"${next(numbered)}", statement))
    connection._archive_prepared_on = raw


def _insert_and_count(instance: Instance, study_pk: Any, now: Any) -> bool:
    """Insert the instance row and add it to its series' and study's counts, atomically.

    Returns whether the study was still receiving; raises :class:`_AlreadyIndexed`
    (changing nothing) if the SOP Instance UID is indexed already. On PostgreSQL it is one
    statement (one round trip): outside a transaction it is committed by
    :data:`group_commit`, possibly in one transaction with other associations'
    rows, and returns once that commit is durable.
    """
    connection = transaction.get_connection()
    params = [f.get_db_prep_save(getattr(instance, f.attname), connection) for f in _INSTANCE_FIELDS]
    series_pk = Series._meta.pk.get_db_prep_value(instance.series_id, connection)  # type: ignore[union-attr]
    study_key = Study._meta.pk.get_db_prep_value(study_pk, connection)  # type: ignore[union-attr]
    if connection.vendor == "postgresql":
        copy = copy_params(instance, connection)
        values = [*params, instance.size, series_pk, *copy, instance.size, now, study_key]

        def insert(cursor: Any) -> Any:
            _prepare(cursor.db, cursor)
            cursor.execute(f"EXECUTE {_PREPARED} ({', '.join(['%s'] * len(values))})", values)
            return cursor.fetchone()

        row = insert_now(insert) if connection.in_atomic_block else group_commit.run(insert)
        if row is None:
            raise _AlreadyIndexed
        return row[0] == Study.State.RECEIVING
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute(_INSERT_INSTANCE, params)
        if not cursor.rowcount:
            raise _AlreadyIndexed
        cursor.execute(_COUNT_SERIES, [instance.size, series_pk])
        cursor.execute(COPY_INSERT, copy_params(instance, connection))
        cursor.execute(_COUNT_STUDY, [instance.size, now, study_key])
        cursor.execute(f"SELECT state FROM {Study._meta.db_table} WHERE id = %s", [study_key])  # noqa: S608
        return cursor.fetchone()[0] == Study.State.RECEIVING


def insert_now(statement: Callable[[Any], Any]) -> Any:
    """Run ``statement(cursor)`` on this thread's connection, in its transaction if it is in one."""
    with transaction.get_connection().cursor() as cursor:
        return statement(cursor)


@dataclass(eq=False)
class _Waiting:
    statement: Callable[[Any], Any]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to commit the next group rather than with a result
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Index statements of several threads of a process (its associations) committed in one transaction.

    Leader and followers, without a committer thread: a thread with a
    statement to commit while no other is committing commits it at once, as
    its own transaction (one association alone pays nothing for this). While
    it commits, other threads' statements queue; when it is done it wakes the
    first of them, which commits the whole queue in one transaction, and so
    on. Each thread returns only once the transaction holding its statement
    has committed (durably: synchronous commit), so an association is
    answered when its own row is durable, never before. A group that fails
    is rolled back and its statements are run again one by one, so one bad
    row fails only its own request.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._leading = False
        self.groups = 0  # transactions committed for more than one statement (for tests and profiles)

    def run(self, statement: Callable[[Any], Any]) -> Any:
        """``statement(cursor)``'s result once it is committed (its exception if it failed)."""
        waiting = _Waiting(statement)
        with self._lock:
            self._queue.append(waiting)
            lead = not self._leading
            self._leading = True
        if not lead:
            waiting.done.wait()
            if waiting.lead:  # the previous group is committed: commit the next
                waiting.done.clear()
                lead = True
        if lead:
            self._lead()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue[: self.limit], self._queue[self.limit :]
        try:
            self._commit(group)
        finally:
            with self._lock:
                successor: _Waiting | None = self._queue[0] if self._queue else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._leading = False
            for waiting in group:
                waiting.done.set()
            if successor is not None:
                successor.done.set()

    def _commit(self, group: list[_Waiting]) -> None:
        if len(group) > 1:
            try:
                with transaction.atomic():
                    results = [insert_now(waiting.statement) for waiting in group]
            except Exception:
                log.info("a group of %d index statements failed; running them one by one", len(group), exc_info=True)
            else:
                for waiting, result in zip(group, results, strict=True):
                    waiting.result = result
                self.groups += 1
                return
        for waiting in group:
            try:
                waiting.result = insert_now(waiting.statement)  # its own transaction (autocommit)
            except BaseException as exc:
                waiting.error = exc


# One per process: the associations it serves are its threads.
group_commit = GroupCommit()


def _non_image(modality: str) -> bool:
    # Rare (a report, a key object selection): counted apart, off the per-image path.
    return modality.upper() in NON_IMAGE_MODALITIES


def _modalities_after(study_pk: Any, modality: str) -> str:
    current = Study.objects.filter(pk=study_pk).values_list("modalities", flat=True).first() or ""
    values = set(filter(None, current.split("\\"))) | ({modality} if modality else set())
    return "\\".join(sorted(values))[:64]


def _national_id(ds: pydicom.Dataset) -> str:
    """The national identifier among the Other Patient IDs (0010,1002), or ""."""
    try:
        for item in ds.get("OtherPatientIDsSequence") or []:
            if _text(item, "IssuerOfPatientID").upper() in NATIONAL_ID_ISSUERS:
                return _text(item, "PatientID")[:64]
    except (TypeError, ValueError):
        pass
    return ""


def _get_or_create_study(
    ds: pydicom.Dataset, study_uid: str, institution: Institution, now: Any
) -> tuple[_StudyRef, bool]:
    received = patient_module(ds)
    patient_id, issuer = received["PatientID"], patient_issuer(institution, received)
    if not patient_id:
        issuer = _anonymous_issuer(study_uid)
    forms = names.name_forms(received["PatientName"])
    patient, _ = Patient.objects.get_or_create(
        institution=institution,
        patient_id=patient_id,
        issuer=issuer,
        defaults={
            "name": forms.full[:324],
            "name_search": forms.alphabetic[:324],
            "name_ideographic": forms.ideographic[:324],
            "name_phonetic": forms.phonetic[:324],
            "name_words": forms.words[:400],
            "birth_date": _safe_date(ds, "PatientBirthDate"),
            "sex": received["PatientSex"][:16],
            "national_id": _national_id(ds),
            "created_at": now,
            "updated_at": now,
        },
    )
    referring = names.name_forms(_text(ds, "ReferringPhysicianName"))
    study, created = Study.objects.get_or_create(
        institution=institution,
        study_instance_uid=study_uid,
        defaults={
            "patient": patient,
            "study_date": _safe_date(ds, "StudyDate"),
            "study_time": _safe_time(ds, "StudyTime"),
            "accession_number": _text(ds, "AccessionNumber")[:16],
            "study_id": _text(ds, "StudyID")[:16],
            "description": _text(ds, "StudyDescription")[:64],
            "referring_physician": referring.full[:324],
            "referring_physician_search": referring.alphabetic[:324],
            "received_at": now,
            "last_instance_at": now,
            "received_patient": received,
        },
    )
    return _StudyRef(study.pk, study.patient_id, study.received_patient or received), created


def _get_or_create_series(
    ds: pydicom.Dataset, ref: _StudyRef, series_uid: str, now: Any
) -> tuple[tuple[Any, str], bool]:
    request = None
    try:
        sequence = ds.get("RequestAttributesSequence")
        request = sequence[0] if sequence else None
    except (TypeError, ValueError, IndexError):
        request = None
    series, created = Series.objects.get_or_create(
        study_id=ref.study_pk,
        series_instance_uid=series_uid,
        defaults={
            "modality": _text(ds, "Modality")[:16],
            "series_number": _int(ds, "SeriesNumber"),
            "description": _text(ds, "SeriesDescription")[:64],
            "body_part": _text(ds, "BodyPartExamined")[:64],
            "performed_start_date": _safe_date(ds, "PerformedProcedureStepStartDate"),
            "performed_start_time": _safe_time(ds, "PerformedProcedureStepStartTime"),
            "scheduled_procedure_step_id": _text(request, "ScheduledProcedureStepID")[:16] if request else "",
            "requested_procedure_id": _text(request, "RequestedProcedureID")[:16] if request else "",
            "created_at": now,
        },
    )
    return (series.pk, series.modality), created


def _reopen_if_complete(study_pk: Any, source: Source) -> None:
    """A late instance for a study already complete (or routed already) reopens its completeness."""
    if Study.objects.filter(pk=study_pk, state__in=(Study.State.COMPLETE, Study.State.ROUTED)).exists():
        from .actions import do_reopen_study

        do_reopen_study(study_pk, actor=source.actor, actor_label=source.label, reason="a new instance arrived")


def _schedule_copy(instance_pk: Any) -> None:
    from .tasks import copy_to_object_store

    try:
        copy_to_object_store.delay([str(instance_pk)])
    except Exception:  # the periodic sweep copies it if the broker is away
        log.warning("could not queue the copy of instance %s; the sweep will copy it", instance_pk, exc_info=True)
