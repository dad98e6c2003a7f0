"""Reading archived objects back: as stored, with corrections, in another transfer syntax, by frame.

Shared by WADO-RS and the DIMSE retrieve services (C-GET, C-MOVE). An
object goes out byte for byte as it was received unless

* its study has ``header_overrides`` (a demographics correction or a relink,
  see :mod:`archive.actions`): the Patient module is replaced on the way out
  and the rest of the data set, pixel data included, is unchanged; or
* the receiver cannot take the transfer syntax it was received in: it is
  decoded to Explicit VR Little Endian (PS3.18 §8.7.3.5.2 makes that the
  default for ``application/dicom``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pydicom.filewriter
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .copies.locations import reader
from .ingest import file_meta_header
from .models import Instance
from .storage import CHUNK

NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}

# Part media types of compressed frames (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class CannotTranscode(ValueError):
    """The object cannot be given in the transfer syntax asked for."""


def can_decode(transfer_syntax: str) -> bool:
    """Whether the installed codecs can decode pixel data in ``transfer_syntax``."""
    if transfer_syntax in NATIVE:
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return get_decoder(UID(transfer_syntax)).is_available
    except (NotImplementedError, ValueError, ImportError):
        return False


def iter_object(instance: Instance, chunk: int = CHUNK) -> Iterator[bytes]:
    """The stored object as it was received, in chunks."""
    with reader().open(instance.storage_key) as handle:
        yield from iter(lambda: handle.read(chunk), b"")


def read_object(instance: Instance) -> bytes:
    with reader().open(instance.storage_key) as handle:
        return handle.read()


def apply_header_overrides(ds: pydicom.Dataset, overrides: dict[str, str]) -> None:
    """Put a study's corrected Patient attributes into a data set (in place)."""
    for keyword, value in overrides.items():
        if value:
            setattr(ds, keyword, value)
        elif keyword in ds:
            ds[keyword].value = ""
    if overrides and any(not str(v).isascii() for v in overrides.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"


def load_dataset(instance: Instance, overrides: dict[str, str] | None = None) -> pydicom.Dataset:
    """The stored object as a data set, corrections applied (pixel data untouched)."""
    ds = pydicom.dcmread(io.BytesIO(read_object(instance)), force=True)
    if overrides:
        # Decode text in the original character set before adding UTF-8 values.
        ds.decode()
        apply_header_overrides(ds, overrides)
    return ds


def as_part10(instance: Instance, *, transfer_syntax: str | None, overrides: dict[str, str]) -> Iterator[bytes]:
    """The object as a Part 10 file in ``transfer_syntax`` (None: as received)."""
    wanted = transfer_syntax or instance.transfer_syntax_uid
    if wanted == instance.transfer_syntax_uid and not overrides:
        yield from iter_object(instance)
        return
    ds = load_dataset(instance, overrides)
    if wanted != instance.transfer_syntax_uid:
        ds = transcode(ds, wanted)
    yield part10_bytes(ds, wanted)


def part10_bytes(ds: pydicom.Dataset, transfer_syntax: str) -> bytes:
    """``ds`` as a Part 10 file with our File Meta Information."""
    header = file_meta_header(str(ds.SOPClassUID), str(ds.SOPInstanceUID), transfer_syntax)
    return header + dataset_bytes(ds, transfer_syntax)


def dataset_bytes(ds: pydicom.Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded in ``transfer_syntax`` (an uncompressed one or its own), without File Meta."""
    syntax = UID(transfer_syntax)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    # The data set keeps the encoding it was read in: pydicom converts what it
    # read in another one (implicit VR elements get their VR, ambiguous VRs
    # are resolved) instead of copying their bytes into the new encoding.
    pydicom.filewriter.write_dataset(body, ds)
    return body.getvalue()


def transcode(ds: pydicom.Dataset, transfer_syntax: str) -> pydicom.Dataset:
    """``ds`` re-encoded in an uncompressed ``transfer_syntax`` (decompressing if needed)."""
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise CannotTranscode(f"objects can be converted only to uncompressed syntaxes, not {transfer_syntax}")
    current = str(ds.file_meta.TransferSyntaxUID)
    if current not in NATIVE:
        if not can_decode(current):
            raise CannotTranscode(f"no decoder for transfer syntax {current}")
        try:
            ds.decompress()
        except Exception as exc:  # a codec failure on one object must not stop a retrieval
            raise CannotTranscode(f"could not decode the pixel data: {exc}") from exc
    elif current == ExplicitVRBigEndian and "PixelData" in ds and int(ds.get("BitsAllocated", 8)) > 8:
        # Native big-endian words must be swapped when the syntax changes (PS3.5 A.3).
        words = np.frombuffer(ds.PixelData, dtype=f">u{int(ds.BitsAllocated) // 8}")
        ds.PixelData = words.astype(f"<u{int(ds.BitsAllocated) // 8}").tobytes()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


# Frames ----------------------------------------------------------------------------


def frame_size(instance: Instance, ds_or_meta: dict[str, Any] | None = None) -> tuple[int, int]:
    """Bytes per native frame and bits allocated."""
    from .ingest import metadata_of

    meta = ds_or_meta if ds_or_meta is not None else metadata_of(instance)
    samples = _meta_int(meta, "00280002", 1)
    bits = instance.bits_allocated or _meta_int(meta, "00280100", 8)
    pixels = (instance.rows or 0) * (instance.columns or 0) * samples
    return (pixels * bits + 7) // 8, bits


def _meta_int(meta: dict[str, Any], tag: str, default: int) -> int:
    try:
        return int(meta[tag]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return default


def frames(instance: Instance, numbers: list[int], *, decode: bool) -> Iterator[tuple[bytes, str]]:
    """``(frame bytes, transfer syntax)`` for each 1-based frame number.

    Native frames come as little-endian raw pixels; encapsulated frames as
    their compressed bit stream, or decoded to raw pixels when ``decode``.
    Raises ``IndexError`` for a frame the object does not have.
    """
    count = instance.number_of_frames or 1
    for number in numbers:
        if not 1 <= number <= count:
            raise IndexError(f"frame {number} is out of range (the object has {count})")
    syntax = instance.transfer_syntax_uid
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) and instance.pixel_data_offset is not None:
        size, bits = frame_size(instance)
        if bits >= 8:
            storage = reader()
            for number in numbers:
                start = instance.pixel_data_offset + (number - 1) * size
                yield storage.read_range(instance.storage_key, start, size), ExplicitVRLittleEndian
            return
    ds: pydicom.Dataset = pydicom.dcmread(io.BytesIO(read_object(instance)), force=True)
    if syntax in NATIVE or decode:
        if syntax not in NATIVE:
            ds = transcode(ds, ExplicitVRLittleEndian)
        elif syntax != ExplicitVRLittleEndian:
            ds = transcode(ds, ExplicitVRLittleEndian)
        yield from _native_frames(ds, numbers, count)
        return
    encapsulated = list(generate_frames(ds.PixelData, number_of_frames=count))
    for number in numbers:
        yield encapsulated[number - 1], syntax


def _native_frames(ds: pydicom.Dataset, numbers: list[int], count: int) -> Iterator[tuple[bytes, str]]:
    data = ds.PixelData
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
    pixels = rows * columns * samples
    if bits == 1:
        # Bit-packed frames need not start on a byte boundary (PS3.5 8.1.1).
        all_bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        for number in numbers:
            chunk = all_bits[(number - 1) * pixels : number * pixels]
            yield np.packbits(chunk, bitorder="little").tobytes(), ExplicitVRLittleEndian
        return
    size = pixels * bits // 8
    for number in numbers:
        yield bytes(data[(number - 1) * size : number * size]), ExplicitVRLittleEndian


def bulk_value(instance: Instance, path: list[str]) -> bytes:
    """The value of a bulk data element: ``path`` is ``[tag]`` or ``[seq tag, index, tag, ...]``."""
    ds = pydicom.dcmread(io.BytesIO(read_object(instance)), force=True)
    current: Any = ds
    try:
        for position, part in enumerate(path):
            if position % 2 == 0:
                element = current[int(part, 16)]
                current = element.value
            else:
                current = current[int(part)]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise KeyError(f"no bulk data at {'/'.join(path)}") from exc
    if not isinstance(current, bytes | bytearray):
        raise KeyError(f"{'/'.join(path)} is not bulk data")
    return bytes(current)
