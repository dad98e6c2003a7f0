"""A seeded corpus of malformed DICOM objects, built from pydicom's sample files.

Every case is a Part 10 file made from one sample by one deterministic
mutation (the random choices come from ``random.Random`` seeded with the
corpus seed and the case's name, so a case id always means the same bytes):
truncations, flipped bytes, bad value representations and lengths, bad UIDs,
deep sequence nesting, NaN values, impossible image attributes, a transfer
syntax that lies. Each case says what the archive must do with it:

* ``stored``: a valid object; it must be stored and read back cleanly;
* ``refused``: it must be refused with a reason;
* ``either``: stored or refused, but never a server error, and if stored it
  must read back cleanly.

Used by the suite in ``tests/attack/`` (a few hundred cases) and by
``bench/attack.py`` (thousands, with more seeds and samples).
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pydicom
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.uid import UID

SEED = 20_201_208

# Small samples, one or more per transfer syntax the archive keeps.
CI_SAMPLES = (
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
)
BENCH_SAMPLES = (
    *CI_SAMPLES,
    "MR_small.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_expb.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "SC_rgb_2frame.dcm",
    "SC_rgb_16bit.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "liver.dcm",
)

STORED, REFUSED, EITHER = "stored", "refused", "either"


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes  # a Part 10 file
    expect: str  # STORED, REFUSED or EITHER
    sop_class_uid: str
    sop_instance_uid: str  # of the data set
    transfer_syntax: str  # as the File Meta Information declares it
    affected_sop_instance_uid: str  # as the File Meta Information names it (a C-STORE's request)

    @property
    def dataset(self) -> bytes:
        """The data set bytes after the File Meta Information (what a C-STORE carries)."""
        end = meta_end(self.data)
        return self.data[end:] if end is not None else self.data


def meta_end(data: bytes) -> int | None:
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return None
    return 144 + struct.unpack("<I", data[140:144])[0]


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


def _load(sample: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(sample), force=True)


_cache: dict[str, bytes] = {}


def _sample_bytes(sample: str) -> bytes:
    if sample not in _cache:
        with open(get_testdata_file(sample), "rb") as handle:  # type: ignore[arg-type]
            _cache[sample] = handle.read()
    return _cache[sample]


def _fresh(sample: str, rng: random.Random) -> pydicom.Dataset:
    """The sample with new Study, Series and SOP Instance UIDs (each case is its own object)."""
    ds = pydicom.dcmread(io.BytesIO(_sample_bytes(sample)), force=True)
    ds.StudyInstanceUID = _uid(rng)
    ds.SeriesInstanceUID = _uid(rng)
    ds.SOPInstanceUID = _uid(rng)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"ATK{rng.getrandbits(48):012x}"  # one patient per case: no clash between cases
    ds.PatientName = "张^三"
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _encode(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    with config.disable_value_validation():
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _syntax(ds: pydicom.Dataset) -> UID:
    return UID(str(ds.file_meta.TransferSyntaxUID))


def _tag_bytes(tag: int, syntax: UID) -> bytes:
    order = "<" if syntax.is_little_endian else ">"
    return struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)


def _find(data: bytes, tag: int, syntax: UID) -> int:
    """Where element ``tag`` starts in the data set of ``data`` (-1 if absent)."""
    start = meta_end(data) or 0
    return data.find(_tag_bytes(tag, syntax), start)


def _pixel_offset(data: bytes, syntax: UID) -> int:
    return _find(data, 0x7FE00010, syntax)


# Mutations ---------------------------------------------------------------------------
# Each takes the sample's re-identified data set and a seeded generator, and
# returns the bytes and what the archive must do with them, or None when the
# mutation does not apply to this sample.

Mutation = Callable[[pydicom.Dataset, random.Random], tuple[bytes, str] | None]


def original(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    return _encode(ds), STORED


def truncated_pixels(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    data = _encode(ds)
    at = _pixel_offset(data, _syntax(ds))
    if at < 0:
        return None
    cut = rng.randrange(at + 16, len(data) - 1)
    return data[:cut], REFUSED


def truncated_header(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    """Cut inside the value of an element of the data set (never on an element boundary)."""
    syntax = _syntax(ds)
    data = _encode(ds)
    candidates = [e.tag for e in ds if e.VR in ("LO", "PN", "SH", "UI", "DA", "CS") and len(str(e.value)) >= 4]
    tag = rng.choice(candidates)
    at = _find(data, tag, syntax)
    if at < 0:
        return None
    header = 8 if syntax.is_implicit_VR else 8
    return data[: at + header + 2], REFUSED


def flipped_bytes(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(_encode(ds))
    start = meta_end(bytes(data)) or 0
    end = min(len(data), start + 768)
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    return bytes(data), EITHER


def flipped_meta(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(_encode(ds))
    end = meta_end(bytes(data)) or 200
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(132, end)] ^= 1 << rng.randrange(8)
    return bytes(data), EITHER


def bad_vr(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    syntax = _syntax(ds)
    if syntax.is_implicit_VR:
        return None
    data = bytearray(_encode(ds))
    tag = rng.choice([0x00080060, 0x00100010, 0x0020000D, 0x00080020, 0x00280010])
    at = _find(bytes(data), tag, syntax)
    if at < 0:
        return None
    data[at + 4 : at + 6] = rng.choice([b"ZZ", b"\x00\x00", b"??", b"xy"])
    return bytes(data), EITHER


def bad_length(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    syntax = _syntax(ds)
    data = bytearray(_encode(ds))
    tag = rng.choice([0x00100010, 0x00080060, 0x00200013, 0x00280010])
    at = _find(bytes(data), tag, syntax)
    if at < 0:
        return None
    order = "<" if syntax.is_little_endian else ">"
    if syntax.is_implicit_VR:
        data[at + 4 : at + 8] = struct.pack(order + "I", rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 12_345_677]))
    else:
        data[at + 6 : at + 8] = struct.pack(order + "H", rng.choice([0xFFFF, 0xFFF1, 999]))
    return bytes(data), EITHER


def _replace_value(data: bytes, tag: int, syntax: UID, value: bytes) -> bytes:
    """``data`` with the value of element ``tag`` (a short text VR) replaced by ``value`` as it is."""
    at = _find(data, tag, syntax)
    if at < 0:
        return data
    order = "<" if syntax.is_little_endian else ">"
    if len(value) % 2:
        value += b" "
    if syntax.is_implicit_VR:
        length = struct.unpack(order + "I", data[at + 4 : at + 8])[0]
        head = data[at : at + 4] + struct.pack(order + "I", len(value))
        return data[:at] + head + value + data[at + 8 + length :]
    length = struct.unpack(order + "H", data[at + 6 : at + 8])[0]
    head = data[at : at + 6] + struct.pack(order + "H", len(value))
    return data[:at] + head + value + data[at + 8 + length :]


def _with(ds: pydicom.Dataset, **values: object) -> bytes:
    with config.disable_value_validation():
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return _encode(ds)


BAD_UIDS = (
    "1.2.03.4",  # a component with a leading zero (PS3.5 9.1)
    "1.2.840." + "1" * 60,  # longer than 64 characters
    "1.2.abc.4",
    "1.2.３.4",  # a non-ASCII digit
    "1.2..3",
    "1.2.3.",
    ".1.2.3",
    "1.2.3\\1.2.4",  # two values
    "1.2.3 4",
)


def bad_uid(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    value = rng.choice(BAD_UIDS)
    keyword = rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    raw = value.encode("utf-8")
    # pydicom writes UIDs as ASCII: write a placeholder as long, then put the bytes in its place.
    placeholder = "1." + "7" * (len(raw) - 2)
    if keyword == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = placeholder
    data = _with(ds, **{keyword: placeholder})
    return data.replace(placeholder.encode(), raw), REFUSED


def deep_nesting(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    """A Digital Signatures Sequence (FFFA,FFFA) nested hundreds of levels deep, with undefined lengths."""
    syntax = _syntax(ds)
    if syntax.is_deflated:
        return _encode(ds), STORED
    order = "<" if syntax.is_little_endian else ">"
    depth = rng.randint(150, 400)
    sequence = _tag_bytes(0xFFFAFFFA, syntax) + (b"" if syntax.is_implicit_VR else b"SQ\x00\x00")
    sequence += struct.pack(order + "I", 0xFFFFFFFF)
    item = _tag_bytes(0xFFFEE000, syntax) + struct.pack(order + "I", 0xFFFFFFFF)
    item_end = _tag_bytes(0xFFFEE00D, syntax) + b"\x00" * 4
    sequence_end = _tag_bytes(0xFFFEE0DD, syntax) + b"\x00" * 4
    nested = (sequence + item) * depth + (item_end + sequence_end) * depth
    return _encode(ds) + nested, REFUSED


NAN_TAGS = {"SliceThickness": 0x00180050, "PatientWeight": 0x00101030, "PixelSpacing": 0x00280030}


def nan_values(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    keyword = rng.choice(list(NAN_TAGS))
    value = rng.choice([b"NaN", b"nan", b"Infinity", b"-inf"])
    data = _with(ds, **{keyword: [1, 1] if keyword == "PixelSpacing" else 1})
    raw = value + b"\\" + value if keyword == "PixelSpacing" else value
    return _replace_value(data, NAN_TAGS[keyword], _syntax(ds), raw), STORED


def infinite_spacing(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    """Pixel Spacing of infinity: a valid object whose rendering must not divide infinity by itself."""
    data = _with(ds, PixelSpacing=[1, 1])
    value = rng.choice([b"Infinity\\Infinity", b"inf\\1", b"1\\-inf"])
    return _replace_value(data, 0x00280030, _syntax(ds), value), STORED


def bad_frames(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    data = _with(ds, NumberOfFrames=1 if "NumberOfFrames" not in ds else ds.NumberOfFrames)
    value = rng.choice([b"-1", b"0", b"abc", b"99999", b"1\\2"])
    return _replace_value(data, 0x00280008, _syntax(ds), value), REFUSED


def zero_rows(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    if "PixelData" not in ds:
        return None
    return _with(ds, **{rng.choice(["Rows", "Columns"]): 0}), REFUSED


def wrong_bits(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    """Native pixel data too short for the image attributes."""
    if _syntax(ds).is_compressed or "PixelData" not in ds:
        return None
    choice = rng.choice(["bits", "rows", "samples"])
    if choice == "bits":
        return _with(ds, BitsAllocated=int(ds.BitsAllocated) * 2, BitsStored=int(ds.BitsAllocated) * 2), REFUSED
    if choice == "rows":
        return _with(ds, Rows=int(ds.Rows) * 2), REFUSED
    samples = int(ds.get("SamplesPerPixel", 1))
    return _with(ds, SamplesPerPixel=samples * 3, PlanarConfiguration=0), REFUSED


def short_pixels(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    """Well-formed, but the pixel data is shorter than the image needs (or a fragment is missing)."""
    syntax = _syntax(ds)
    if "PixelData" not in ds:
        return None
    if syntax.is_compressed:
        return _cut_fragment(ds, rng)
    data = bytes(ds.PixelData)
    keep = rng.randrange(2, max(3, len(data) // 2)) & ~1
    ds.PixelData = data[:keep]
    return _encode(ds), REFUSED


def _cut_fragment(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    """An encapsulated Pixel Data whose last fragment's item length runs past the sequence's end."""
    data = bytearray(_encode(ds))
    syntax = _syntax(ds)
    at = _pixel_offset(bytes(data), syntax)
    delimiter = bytes(data).rfind(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    if at < 0 or delimiter < 0:
        return None
    last_item = bytes(data).rfind(b"\xfe\xff\x00\xe0", at, delimiter)
    if last_item < 0:
        return None
    length = struct.unpack("<I", data[last_item + 4 : last_item + 8])[0]
    cut = rng.randrange(2, max(3, length // 2)) & ~1
    # Remove bytes from the fragment's end but keep its stated length and the delimiter.
    del data[delimiter - cut : delimiter]
    return bytes(data), REFUSED


def deflate_on_plain(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str] | None:
    """File Meta says Deflated Explicit VR Little Endian; the data set is not deflated."""
    if _syntax(ds) != "1.2.840.10008.1.2.1":
        return None
    data = bytearray(_encode(ds))
    at = data.find(b"1.2.840.10008.1.2.1\x00", 132)
    if at < 0:
        return None
    # Same length: "1.2.840.10008.1.2.1.99" would not fit, so write it and fix the lengths.
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)  # type: ignore[attr-defined]
    end = meta_end(bytes(data)) or 0
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + bytes(data[end:]), REFUSED


def garbage(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    body = rng.randbytes(rng.randrange(0, 600))
    return rng.choice([b"", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM" + body, body]), REFUSED


def bad_meta_uid(ds: pydicom.Dataset, rng: random.Random) -> tuple[bytes, str]:
    """File Meta names a SOP instance that is not a UID (or not the data set's)."""
    value = rng.choice(["1.2.３.4", "1.2.03.4", "1.2.3.4.5.6"])
    data = _encode(ds)
    original_uid = str(ds.SOPInstanceUID).encode()
    padded = value.encode("utf-8")
    if len(padded) % 2:
        padded += b"\x00"
    end = meta_end(data) or 0
    at = data.find(original_uid, 132, end)
    if at < 0:
        return data, STORED
    # Keep the meta group's lengths honest.
    old_len = len(original_uid) + (len(original_uid) % 2)
    meta = bytearray(data[:end])
    meta[at - 2 : at] = struct.pack("<H", len(padded))
    meta[at : at + old_len] = padded
    group_length = struct.unpack("<I", meta[140:144])[0] + len(padded) - old_len
    meta[140:144] = struct.pack("<I", group_length)
    return bytes(meta) + data[end:], REFUSED


MUTATIONS: dict[str, Mutation] = {
    "original": original,
    "truncated_pixels": truncated_pixels,
    "truncated_header": truncated_header,
    "flipped_bytes": flipped_bytes,
    "flipped_meta": flipped_meta,
    "bad_vr": bad_vr,
    "bad_length": bad_length,
    "bad_uid": bad_uid,
    "deep_nesting": deep_nesting,
    "nan_values": nan_values,
    "infinite_spacing": infinite_spacing,
    "bad_frames": bad_frames,
    "zero_rows": zero_rows,
    "wrong_bits": wrong_bits,
    "short_pixels": short_pixels,
    "deflate_on_plain": deflate_on_plain,
    "garbage": garbage,
    "bad_meta_uid": bad_meta_uid,
}


def build(sample: str, mutation: str, variant: int = 0, seed: int = SEED) -> Case | None:
    """One case; None when the mutation does not apply to the sample."""
    case_id = f"{mutation}-{sample.removesuffix('.dcm')}-{variant}"
    rng = random.Random(f"{seed}:{case_id}")
    ds = _fresh(sample, rng)
    sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    made = MUTATIONS[mutation](ds, rng)
    if made is None:
        return None
    data, expect = made
    affected = sop_uid
    if mutation in ("deflate_on_plain", "bad_meta_uid"):
        meta = _declared(data)
        syntax, affected = meta.get("TransferSyntaxUID", syntax), meta.get("MediaStorageSOPInstanceUID", affected)
    return Case(case_id, data, expect, sop_class, sop_uid, syntax, affected)


def _declared(data: bytes) -> dict[str, str]:
    """The UIDs the File Meta Information declares, as text (undecodable bytes kept as escapes)."""
    end = meta_end(data) or 0
    found = {}
    for keyword, tag in (("TransferSyntaxUID", 0x00020010), ("MediaStorageSOPInstanceUID", 0x00020003)):
        at = data.find(struct.pack("<HH", tag >> 16, tag & 0xFFFF), 132, end)
        if at >= 0:
            length = struct.unpack("<H", data[at + 6 : at + 8])[0]
            found[keyword] = data[at + 8 : at + 8 + length].rstrip(b"\x00 ").decode("utf-8", "backslashreplace")
    return found


def cases(
    samples: tuple[str, ...] = CI_SAMPLES, variants: int = 1, seed: int = SEED, mutations: tuple[str, ...] = ()
) -> Iterator[Case]:
    for variant in range(variants):
        for sample in samples:
            for mutation in mutations or tuple(MUTATIONS):
                case = build(sample, mutation, variant, seed)
                if case is not None:
                    yield case
