"""The DICOM grayscale and colour display pipeline, model-free.

Stored values → Modality LUT → VOI LUT → Presentation LUT → 8-bit P-values
(PS3.3 C.11, PS3.14 for the idea of P-values), or for colour images the
conversion of the stored samples to 8-bit RGB (PS3.3 C.7.6.3.1.2, C.7.6.3.1.5
palette colour, C.7.9 segmented palettes through pydicom).

Speed: for 8- and 16-bit grayscale the whole chain from a stored value to a
P-value is folded into one uint8 lookup table over every possible stored code
(256 or 65,536 entries), built once per parameter set and cached; rendering a
frame is then a single ``np.take`` — no float arithmetic per pixel. Other
depths (32-bit, float) go through a vectorised float path.

Nothing here touches Django: the same functions serve the DICOMweb rendered
resources, thumbnails, MPR and the tests.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import apply_color_lut

# Part of every ETag and cache key: bump when rendered output changes.
ENGINE_VERSION = "3"

# VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3
LINEAR = "LINEAR"
LINEAR_EXACT = "LINEAR_EXACT"
SIGMOID = "SIGMOID"
VOI_FUNCTIONS = (LINEAR, LINEAR_EXACT, SIGMOID)

MEDIA_TYPES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}
LOSSY = {"image/jpeg", "image/webp"}


class RenderError(Exception):
    """The request or the object cannot be rendered; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# Attributes -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Lut:
    """A LUT from a LUT Descriptor (0028,3002) and LUT Data (0028,3006), PS3.3 C.11.1.1.

    ``first`` is the first stored/input value mapped; inputs below map to
    entry 0, inputs past the end to the last entry.
    """

    first: int
    bits: int
    data: np.ndarray
    key: str

    @classmethod
    def from_item(cls, item: Dataset, *, signed_input: bool) -> Lut:
        descriptor = [int(v) for v in item.LUTDescriptor]
        if len(descriptor) != 3:
            raise RenderError("LUT Descriptor must have three values", status=422)
        entries, first, bits = descriptor
        entries = entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16 entries
        # The descriptor's first value is US or SS following Pixel Representation.
        if signed_input and first >= 32768:
            first -= 65536
        raw = item.LUTData
        if isinstance(raw, bytes | bytearray):
            if bits <= 8 and len(raw) == entries:
                data = np.frombuffer(raw, dtype=np.uint8)
            else:
                data = np.frombuffer(raw, dtype="<u2")
        else:
            data = np.asarray(raw if isinstance(raw, Sequence) else [raw], dtype=np.int64)
        data = np.asarray(data[:entries], dtype=np.float64)
        if data.size == 0:
            raise RenderError("empty LUT Data", status=422)
        key = hashlib.sha1(data.tobytes() + f"{first}/{bits}".encode()).hexdigest()  # noqa: S324 - a cache key
        return cls(first=first, bits=bits, data=data, key=key)

    def lookup(self, x: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(x - self.first), 0, self.data.size - 1).astype(np.intp)
        return self.data[index]


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2); ``width`` must be ≥ 1 for LINEAR, > 0 otherwise."""

    center: float
    width: float
    function: str = LINEAR
    explanation: str = ""

    def valid(self) -> bool:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            return False
        return self.width >= 1 if self.function == LINEAR else self.width > 0


@dataclass
class FrameInfo:
    """What the display pipeline needs to know about one frame of an image."""

    rows: int
    columns: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    number_of_frames: int = 1
    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: Lut | None = None
    windows: list[Window] = field(default_factory=list)
    voi_luts: list[Lut] = field(default_factory=list)
    presentation_shape: str = ""
    presentation_lut: Lut | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing) in mm
    pixel_aspect: tuple[float, float] | None = None  # Pixel Aspect Ratio (vertical, horizontal)
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    padding: int | None = None

    @property
    def is_color(self) -> bool:
        return self.samples > 1 or self.photometric == "PALETTE COLOR"

    @property
    def inverted(self) -> bool:
        """Whether P-values are the inverse of the VOI output (PS3.3 C.11.6.1, C.7.6.3.1.2).

        MONOCHROME1 means minimum stored value shows white; an image's
        Presentation LUT Shape INVERSE (DX and MG images use it with
        MONOCHROME1) asks for the same. The two agree in valid images, so
        either one inverts, once.
        """
        return self.photometric == "MONOCHROME1" or self.presentation_shape == "INVERSE"

    def aspect_scale(self) -> float:
        """Display height per stored row relative to width per column (≥ 0)."""
        if self.pixel_spacing and self.pixel_spacing[0] > 0 and self.pixel_spacing[1] > 0:
            return self.pixel_spacing[0] / self.pixel_spacing[1]
        if self.pixel_aspect and self.pixel_aspect[0] > 0 and self.pixel_aspect[1] > 0:
            return self.pixel_aspect[0] / self.pixel_aspect[1]
        return 1.0


def _floats(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float) or not isinstance(value, Sequence):
        value = [value]
    out = []
    for v in value:
        try:
            number = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):  # a DS of "NaN" or "inf" says nothing usable
            out.append(number)
    return out


def _functional_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` for frame ``index`` (PS3.3 C.7.6.16)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        seq = per_frame[index].get(keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            return seq[0]
    return None


def _windows_from(item: Dataset) -> list[Window]:
    centers = _floats(item.get("WindowCenter"))
    widths = _floats(item.get("WindowWidth"))
    function = str(item.get("VOILUTFunction", "") or LINEAR).strip().upper()
    if function not in VOI_FUNCTIONS:
        function = LINEAR
    explanations = item.get("WindowCenterWidthExplanation", "")
    if isinstance(explanations, str):
        explanations = [explanations]
    windows = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        text = str(explanations[i]) if i < len(explanations) else ""
        window = Window(c, w, function, text)
        if window.valid():
            windows.append(window)
    return windows


def frame_info(ds: Dataset, index: int = 0) -> FrameInfo:
    """The pipeline attributes of frame ``index``, top level or from functional groups."""
    try:
        return _frame_info(ds, index)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise RenderError(f"invalid image attributes: {exc}", status=422) from exc


def _frame_info(ds: Dataset, index: int) -> FrameInfo:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits_allocated = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise RenderError("the object has no image pixel module", status=422) from None
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    info = FrameInfo(
        rows=rows,
        columns=columns,
        samples=int(ds.get("SamplesPerPixel") or 1),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
        number_of_frames=int(ds.get("NumberOfFrames") or 1),
        presentation_shape=str(ds.get("PresentationLUTShape", "") or "").strip().upper(),
    )
    if info.is_color:
        return _geometry(ds, index, info)

    # Modality LUT: functional group, then top level (PS3.3 C.11.1, C.7.6.16.2.9).
    transform = _functional_item(ds, index, "PixelValueTransformationSequence") or ds
    slope = _floats(transform.get("RescaleSlope"))
    intercept = _floats(transform.get("RescaleIntercept"))
    if slope and intercept and slope[0] != 0:
        info.slope, info.intercept = slope[0], intercept[0]
    elif ds.get("ModalityLUTSequence"):
        info.modality_lut = Lut.from_item(ds.ModalityLUTSequence[0], signed_input=signed)

    voi = _functional_item(ds, index, "FrameVOILUTSequence") or ds
    info.windows = _windows_from(voi)
    for item in ds.get("VOILUTSequence") or []:
        # After a Modality LUT the VOI LUT's input is unsigned modality output
        # unless rescaling produced signed values.
        info.voi_luts.append(Lut.from_item(item, signed_input=signed or info.intercept < 0))
    if ds.get("PresentationLUTSequence"):
        info.presentation_lut = Lut.from_item(ds.PresentationLUTSequence[0], signed_input=False)
    padding = ds.get("PixelPaddingValue")
    if isinstance(padding, int):
        info.padding = padding
    return _geometry(ds, index, info)


def _geometry(ds: Dataset, index: int, info: FrameInfo) -> FrameInfo:
    measures = _functional_item(ds, index, "PixelMeasuresSequence") or ds
    spacing = _floats(measures.get("PixelSpacing")) or _floats(ds.get("ImagerPixelSpacing"))
    if len(spacing) == 2 and spacing[0] > 0 and spacing[1] > 0:
        info.pixel_spacing = (spacing[0], spacing[1])
    aspect = _floats(ds.get("PixelAspectRatio"))
    if len(aspect) == 2:
        info.pixel_aspect = (aspect[0], aspect[1])
    position = _functional_item(ds, index, "PlanePositionSequence") or ds
    ipp = _floats(position.get("ImagePositionPatient"))
    if len(ipp) == 3:
        info.position = (ipp[0], ipp[1], ipp[2])
    orientation = _functional_item(ds, index, "PlaneOrientationSequence") or ds
    iop = _floats(orientation.get("ImageOrientationPatient"))
    if len(iop) == 6:
        info.orientation = tuple(iop)
    return info


class JsonAttributes:
    """Read access to DICOM JSON (PS3.18 F.2) with the bits of the Dataset API ``frame_info`` uses.

    The archive keeps every instance's attributes as DICOM JSON, so the
    pipeline's parameters come from the index without parsing the file.
    Bulk data (stored as a ``BulkDataURI``) reads as absent.
    """

    __slots__ = ("_json",)

    def __init__(self, json_dict: dict) -> None:
        self._json = json_dict

    @staticmethod
    def _tag(keyword: str) -> str | None:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        return None if tag is None else f"{tag:08X}"

    def _value(self, keyword: str) -> Any:
        tag = self._tag(keyword)
        element = self._json.get(tag) if tag else None
        if element is None or "Value" not in element:
            return None
        values = element["Value"]
        if element.get("vr") == "SQ":
            return [JsonAttributes(item) for item in values]
        values = [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
        return values[0] if len(values) == 1 else values

    def get(self, keyword: str, default: Any = None) -> Any:
        value = self._value(keyword)
        return default if value is None else value

    def __contains__(self, keyword: str) -> bool:
        tag = self._tag(keyword)
        return bool(tag and tag in self._json)

    def __getattr__(self, keyword: str) -> Any:
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        value = self._value(keyword)
        if value is None:
            raise AttributeError(keyword)
        return value


def frame_info_from_json(metadata: dict, index: int = 0) -> FrameInfo | None:
    """``frame_info`` from stored DICOM JSON, or None when the JSON cannot say everything.

    LUT sequences carry their tables as bulk data, which the JSON does not
    hold: such images take the file path.
    """
    attributes = JsonAttributes(metadata)
    if any(
        name in attributes
        for name in (
            "ModalityLUTSequence",
            "VOILUTSequence",
            "PresentationLUTSequence",
            "RedPaletteColorLookupTableData",
        )
    ):
        return None
    return frame_info(attributes, index)  # type: ignore[arg-type]


def native_frame_layout(info: FrameInfo, transfer_syntax: str) -> np.dtype | None:
    """The numpy dtype of a frame stored natively little-endian, 8/16-bit grayscale; else None."""
    if transfer_syntax not in (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian):
        return None
    if info.samples != 1 or info.bits_allocated not in (8, 16):
        return None
    if info.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    return np.dtype(("<i" if info.signed else "<u") + str(info.bits_allocated // 8))


def stored_values(raw: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Mask (unsigned) or sign-extend (signed) words whose Bits Stored is below Bits Allocated (PS3.5 8.1.1)."""
    unused = info.bits_allocated - info.bits_stored
    if unused <= 0:
        return raw
    if info.signed:
        return (raw << unused) >> unused  # the arithmetic shift carries the sign bit down
    return raw & np.array((1 << info.bits_stored) - 1, dtype=raw.dtype)


# Decoding -------------------------------------------------------------------


@dataclass(eq=False)
class DecodedFrame:
    """Stored values of one frame and what is needed to display them.

    ``pixels`` holds stored values (sign-extended, masked to Bits Stored) for
    grayscale, RGB samples for colour (YBR already converted), or palette
    indices with ``palette`` holding the expanded RGB tables.
    """

    pixels: np.ndarray
    info: FrameInfo
    palette: np.ndarray | None = None  # (n, 3) RGB for PALETTE COLOR
    palette_first: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes + (self.palette.nbytes if self.palette is not None else 0))


def decode_frame(ds: Dataset, index: int = 0) -> DecodedFrame:
    """Decode frame ``index`` (0-based) of ``ds`` in any supported transfer syntax.

    Compressed syntaxes (RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG
    2000) go through pydicom's decoders backed by the pylibjpeg plugins.
    """
    info = frame_info(ds, index)
    if index < 0 or index >= info.number_of_frames:
        raise RenderError(f"frame {index + 1} does not exist; the object has {info.number_of_frames}", status=404)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RenderError("the object has no pixel data", status=422)
    native = _native_grayscale(ds, info, index)
    if native is not None:
        return DecodedFrame(pixels=native, info=info)
    try:
        # raw=False converts YBR_FULL/YBR_FULL_422 to RGB when the codec has not.
        arr = pixel_array(ds, index=index if info.number_of_frames > 1 else None)
    except NotImplementedError as exc:
        raise RenderError(f"cannot decode this transfer syntax: {exc}", status=422) from exc
    except (ValueError, RuntimeError, OSError, EOFError, KeyError, AttributeError, TypeError) as exc:
        raise RenderError(f"cannot decode the pixel data: {exc}", status=422) from exc
    if info.samples == 1 and arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    frame = DecodedFrame(pixels=arr, info=info)
    if info.photometric == "PALETTE COLOR":
        frame.palette, frame.palette_first = _palette(ds)
    return frame


def _native_grayscale(ds: Dataset, info: FrameInfo, index: int) -> np.ndarray | None:
    """Frame ``index`` of uncompressed little-endian 8/16-bit grayscale, without pydicom's decoder.

    Most CT and MR: a view on the element's bytes, masked or sign-extended.
    Anything else returns None for pydicom.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:  # inflated by dcmread
        syntax = pydicom.uid.ExplicitVRLittleEndian
    dtype = native_frame_layout(info, str(syntax or ""))
    if dtype is None or "PixelData" not in ds:
        return None
    data = ds.PixelData
    if not isinstance(data, bytes | bytearray):
        return None
    size = info.rows * info.columns
    if len(data) < (index + 1) * size * dtype.itemsize:
        raise RenderError(
            f"the pixel data is shorter ({len(data)} bytes) than {info.number_of_frames} frames need", status=422
        )
    arr = np.frombuffer(data, dtype=dtype, count=size, offset=index * size * dtype.itemsize)
    return stored_values(arr.reshape(info.rows, info.columns), info)


def _little_endian(ds: Dataset) -> bool:
    encoding = getattr(ds, "original_encoding", None)
    if encoding and encoding[1] is not None:
        return bool(encoding[1])
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return not (syntax is not None and syntax == pydicom.uid.ExplicitVRBigEndian)


def _palette(ds: Dataset) -> tuple[np.ndarray, int]:
    """The palette expanded to an (entries, 3) uint8 table (PS3.3 C.7.6.3.1.5/.6).

    Plain palettes are read here in the dataset's own byte order; segmented
    ones (C.7.9) are expanded by pydicom.
    """
    try:
        descriptor = [int(v) for v in ds.RedPaletteColorLookupTableDescriptor]
        entries, first, bits = (descriptor[0] or 65536), descriptor[1], descriptor[2]
        if int(ds.get("PixelRepresentation") or 0) and first >= 32768:
            first -= 65536
        if "SegmentedRedPaletteColorLookupTableData" in ds:
            codes = np.arange(first, first + entries, dtype=np.int64)
            rgb = apply_color_lut(codes.astype(np.uint16 if first >= 0 else np.int32), ds).reshape(-1, 3)
            return (rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)), first
        order = "<" if _little_endian(ds) else ">"
        channels = []
        for colour in ("Red", "Green", "Blue"):
            raw = ds[f"{colour}PaletteColorLookupTableData"].value
            if isinstance(raw, bytes | bytearray):
                packed = bits == 8 and len(raw) == entries
                data = np.frombuffer(raw, dtype=np.uint8 if packed else f"{order}u2")
            else:
                data = np.asarray(raw, dtype=np.uint16)
            data = data[:entries].astype(np.uint16)
            channels.append((data >> 8) if bits == 16 else data)
        size = min(c.size for c in channels)
        return np.stack([c[:size] for c in channels], axis=1).astype(np.uint8), first
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise RenderError(f"invalid palette colour lookup table: {exc}", status=422) from exc


# Grayscale: one lookup table from stored code to P-value ---------------------


def voi_normalised(x: np.ndarray, window: Window) -> np.ndarray:
    """Window ``x`` (modality values) into [0, 1], PS3.3 C.11.2.1.2 and C.11.2.1.3."""
    c, w = window.center, window.width
    if window.function == SIGMOID:
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == LINEAR_EXACT:
        y = (x - c) / w + 0.5
        y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, y))
        return np.clip(y, 0.0, 1.0)
    # LINEAR: the "−0.5" and "w−1" keep integer input and output ranges aligned.
    if w <= 1:
        return np.where(x <= c - 0.5, 0.0, 1.0)
    y = (x - (c - 0.5)) / (w - 1) + 0.5
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 1.0, y))
    return np.clip(y, 0.0, 1.0)


@dataclass(frozen=True)
class Voi:
    """The chosen VOI transform: a window, or the file's VOI LUT number ``lut``."""

    window: Window | None = None
    lut: Lut | None = None

    @property
    def key(self) -> tuple:
        if self.lut is not None:
            return ("lut", self.lut.key)
        assert self.window is not None
        return ("win", self.window.center, self.window.width, self.window.function)


def modality_values(stored: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Stored values → modality values (PS3.3 C.11.1), as float64."""
    if info.modality_lut is not None:
        return info.modality_lut.lookup(stored.astype(np.float64))
    return stored.astype(np.float64) * info.slope + info.intercept


def p_values(modality: np.ndarray, voi: Voi, info: FrameInfo) -> np.ndarray:
    """Modality values → 8-bit P-values: VOI, then Presentation LUT or shape."""
    if voi.lut is not None:
        y = voi.lut.lookup(modality) / float((1 << voi.lut.bits) - 1)
    else:
        assert voi.window is not None
        y = voi_normalised(modality, voi.window)
    if info.presentation_lut is not None:
        plut = info.presentation_lut
        y = plut.lookup(y * (plut.data.size - 1) + plut.first) / float((1 << plut.bits) - 1)
    if info.inverted:
        y = 1.0 - y
    return np.floor(np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _stored_domain(info: FrameInfo, dtype: np.dtype) -> np.ndarray:
    """Every stored value a code of ``dtype`` can carry, in unsigned-code order."""
    n = 256 if dtype.itemsize == 1 else 65536
    codes = np.arange(n, dtype=np.int64)
    if dtype.kind == "i":
        codes = np.where(codes >= n // 2, codes - n, codes)
    return codes


_LUTS: OrderedDict[tuple, np.ndarray] = OrderedDict()
_LUTS_MAX = 256
_LUTS_LOCK = threading.Lock()


def grayscale_lut(info: FrameInfo, voi: Voi, dtype: np.dtype) -> np.ndarray:
    """A uint8 table mapping every stored code of ``dtype`` straight to a P-value."""
    key = (
        dtype.str,
        info.slope,
        info.intercept,
        info.modality_lut.key if info.modality_lut else None,
        voi.key,
        info.presentation_lut.key if info.presentation_lut else None,
        info.inverted,
    )
    with _LUTS_LOCK:
        lut = _LUTS.get(key)
        if lut is not None:
            _LUTS.move_to_end(key)
            return lut
    lut = p_values(modality_values(_stored_domain(info, dtype), info), voi, info)
    with _LUTS_LOCK:
        _LUTS[key] = lut
        while len(_LUTS) > _LUTS_MAX:
            _LUTS.popitem(last=False)
    return lut


def choose_voi(frame: DecodedFrame, window: Window | None = None, preset: int | None = None) -> Voi:
    """The VOI transform to apply: an explicit window, the file's window or VOI LUT, or min/max.

    ``preset`` picks the n-th of the file's windows (then its VOI LUTs).
    Without either the first window of the file wins over its first VOI
    LUT, as most viewers do; with neither, the frame's own value range
    (padding excluded) is mapped linearly.
    """
    info = frame.info
    if window is not None:
        return Voi(window=window)
    presets = [Voi(window=w) for w in info.windows] + [Voi(lut=lut) for lut in info.voi_luts]
    if presets:
        return presets[preset if preset is not None and 0 <= preset < len(presets) else 0]
    return Voi(window=auto_window(frame))


def auto_window(frame: DecodedFrame) -> Window:
    stored = frame.pixels
    if frame.info.padding is not None:
        kept = stored[stored != frame.info.padding]
        stored = kept if kept.size else stored
    lo, hi = modality_values(np.array([stored.min(), stored.max()]), frame.info)
    lo, hi = min(lo, hi), max(lo, hi)
    return Window(center=(lo + hi) / 2.0, width=max(hi - lo, 1.0), function=LINEAR_EXACT, explanation="AUTO")


def to_display(frame: DecodedFrame, voi: Voi | None = None) -> np.ndarray:
    """The frame as 8-bit P-values (rows × columns) or 8-bit RGB (rows × columns × 3)."""
    info = frame.info
    px = frame.pixels
    if info.photometric == "PALETTE COLOR" and frame.palette is not None:
        index = np.clip(px.astype(np.int64) - frame.palette_first, 0, len(frame.palette) - 1)
        return frame.palette[index]
    if info.is_color:
        if px.dtype == np.uint8:
            return px
        shift = max(info.bits_stored - 8, 0)
        return (px.astype(np.uint64) >> shift).astype(np.uint8)
    voi = voi or choose_voi(frame)
    if px.dtype.itemsize <= 2 and px.dtype.kind in "iu":
        lut = grayscale_lut(info, voi, px.dtype)
        unsigned: Any = px.view(np.uint8 if px.dtype.itemsize == 1 else np.uint16)
        return np.take(lut, unsigned)
    return p_values(modality_values(px, info), voi, info)


def modality_display(values: np.ndarray, voi: Voi, info: FrameInfo) -> np.ndarray:
    """Modality values (an MPR plane, a slab) → 8-bit P-values, through a table for int16."""
    identity = FrameInfo(
        rows=0,
        columns=0,
        samples=1,
        photometric=info.photometric,
        bits_allocated=16,
        bits_stored=16,
        signed=True,
        presentation_shape=info.presentation_shape,
        presentation_lut=info.presentation_lut,
    )
    if values.dtype == np.int16:
        lut = grayscale_lut(identity, voi, values.dtype)
        return np.take(lut, values.view(np.uint16))
    return p_values(values.astype(np.float64), voi, identity)


# Viewport, output encoding ------------------------------------------------


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.2): size, then an optional source region.

    A negative ``sw``/``sh`` flips the region horizontally/vertically.
    """

    width: int
    height: int
    sx: float = 0
    sy: float = 0
    sw: float | None = None
    sh: float | None = None

    @classmethod
    def parse(cls, text: str) -> Viewport:
        parts = [p.strip() for p in text.split(",")]
        try:
            if len(parts) == 2:
                vw, vh = int(parts[0]), int(parts[1])
                region: list[float] = []
            elif len(parts) == 6:
                vw, vh = int(parts[0]), int(parts[1])
                region = [float(p) if p else 0.0 for p in parts[2:]]
            else:
                raise ValueError
        except ValueError:
            raise RenderError("viewport must be vw,vh or vw,vh,sx,sy,sw,sh") from None
        if not (0 < vw <= 8192 and 0 < vh <= 8192):
            raise RenderError("viewport width and height must be between 1 and 8192")
        if region:
            sx, sy, sw, sh = region
            if not all(math.isfinite(v) for v in region) or sw == 0 or sh == 0:
                raise RenderError("the viewport's source region must have a non-zero width and height")
            return cls(vw, vh, sx, sy, sw, sh)
        return cls(vw, vh)


def to_image(
    display: np.ndarray, *, aspect: float = 1.0, viewport: Viewport | None = None, resample: int | None = None
) -> Image.Image:
    """A PIL image of ``display`` with square display pixels, cropped and fitted to ``viewport``.

    ``aspect`` is the physical height of a row over the width of a column, so
    non-square pixels are stretched to their true shape. The fitted image keeps
    its aspect ratio and is at most ``viewport`` in both dimensions.
    """
    arr = display
    if viewport is not None and viewport.sw is not None and viewport.sh is not None:
        rows, cols = arr.shape[:2]
        x0, y0 = int(round(viewport.sx)), int(round(viewport.sy))
        x1, y1 = x0 + int(round(abs(viewport.sw))), y0 + int(round(abs(viewport.sh)))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)
        if x1 <= x0 or y1 <= y0:
            raise RenderError("the viewport's source region lies outside the image")
        arr = arr[y0:y1, x0:x1]
        if viewport.sw < 0:
            arr = arr[:, ::-1]
        if viewport.sh < 0:
            arr = arr[::-1, :]
    image = Image.fromarray(np.ascontiguousarray(arr))
    width, height = image.size
    true_height = height * aspect
    if viewport is not None:
        scale = min(viewport.width / width, viewport.height / true_height)
        target = (max(1, round(width * scale)), max(1, round(true_height * scale)))
    else:
        target = (width, max(1, round(true_height)))
    if target != image.size:
        if resample is None:
            shrinking = target[0] < width
            resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        image = image.resize(target, resample)
    return image


def encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    """Encode ``image`` as ``media_type``; ``quality`` (1–100) applies to JPEG and WebP."""
    buffer = io.BytesIO()
    fmt = MEDIA_TYPES[media_type]
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=quality)
    elif fmt == "WEBP":
        image.save(buffer, "WEBP", quality=quality, method=2)
    elif fmt == "PNG":
        image.save(buffer, "PNG", compress_level=3)
    else:
        image.save(buffer, "GIF")
    return buffer.getvalue()


def parse_window(text: str) -> Window:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.3); function linear, linear-exact or sigmoid."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise RenderError("window must be center,width[,function]")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise RenderError("window center and width must be numbers") from None
    function = LINEAR
    if len(parts) == 3 and parts[2]:
        function = parts[2].upper().replace("-", "_")
        if function not in VOI_FUNCTIONS:
            raise RenderError("window function must be linear, linear-exact or sigmoid")
    window = Window(center, width, function)
    if not window.valid():
        raise RenderError("window width must be at least 1 (linear) or above 0 (linear-exact, sigmoid)")
    return window


def read_dataset(fileobj: Any) -> Dataset:
    """Parse a stored object for rendering (pixel data included)."""
    try:
        return pydicom.dcmread(fileobj, force=False)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, OSError, KeyError) as exc:
        raise RenderError(f"the stored object is not readable DICOM: {exc}", status=422) from exc
