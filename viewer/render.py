"""Rendering archived instances: storage → decoded frame → display pipeline → image bytes.

The glue between the archive's rows and :mod:`viewer.pixels`. Decoded frames
are kept in this process's byte-bounded LRU; a frame whose series volume is
already decoded (for MPR) is served from the volume without decoding again.
Rendered bytes go to the shared render cache under a key that is also the
response's ETag.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pydicom
from django.conf import settings
from PIL import Image

from archive.copies.locations import reader
from archive.models import Instance

from . import pixels
from .caches import decoded_cache, render_cache
from .pixels import DecodedFrame, RenderError, Viewport, Window

DEFAULT_QUALITY = 90
THUMBNAIL_VIEWPORT = Viewport(128, 128)
THUMBNAIL_QUALITY = 80


@dataclass(frozen=True)
class RenderParams:
    """What a rendered-resource request asks for (PS3.18 8.3.5.1)."""

    media_type: str = "image/jpeg"
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    preset: int | None = None  # the n-th VOI preset of the file (our extension: ``voi=n``)
    viewport: Viewport | None = None

    def key(self) -> str:
        window = (
            (self.window.center, self.window.width, self.window.function) if self.window is not None else self.preset
        )
        quality = self.quality if self.media_type in pixels.LOSSY else 0
        return f"{self.media_type}|{quality}|{window}|{self.viewport}"


def load_dataset(instance: Instance) -> Any:
    with reader().open(instance.storage_key) as handle:
        if not getattr(handle, "seekable", lambda: False)():
            # An object store's stream (another site's copy): the reader needs to seek.
            return pixels.read_dataset(io.BytesIO(handle.read()))
        return pixels.read_dataset(handle)


# Series volumes register their slices here so single-frame renders can use them.
_volume_of: dict[tuple[Any, int], tuple[Any, int]] = {}
_volume_of_lock = threading.Lock()


def register_volume_slices(volume_key: Any, slices: list[tuple[Any, int]]) -> None:
    """Remember that (instance cache id, frame index) pairs are slices of ``volume_key``."""
    with _volume_of_lock:
        if len(_volume_of) > 200_000:
            _volume_of.clear()
        for index, slice_id in enumerate(slices):
            _volume_of[slice_id] = (volume_key, index)


def _frame_from_volume(cache_id: tuple[Any, int]) -> DecodedFrame | None:
    entry = _volume_of.get(cache_id)
    if entry is None:
        return None
    volume = decoded_cache().get(entry[0])
    if volume is None or volume.data.dtype != np.int16:
        return None
    info = volume.infos[entry[1]]
    # The volume holds modality values: show them through an identity Modality LUT.
    view = replace(info, slope=1.0, intercept=0.0, modality_lut=None, bits_allocated=16, bits_stored=16, signed=True)
    if info.padding is not None:
        view.padding = int(round(info.padding * info.slope + info.intercept))
    return DecodedFrame(pixels=volume.data[entry[1]], info=view)


def instance_cache_id(instance: Instance) -> tuple[str, str]:
    return (str(instance.pk), instance.sha256)


def read_native_frame(instance: Instance, index: int) -> DecodedFrame | None:
    """Read one natively stored grayscale frame straight from the object, without parsing it.

    The pipeline's attributes come from the archive's DICOM JSON. The Pixel
    Data element is found at the end of the object and accepted only when its
    tag, VR and length are exactly what the attributes predict; anything else
    (trailing elements, odd lengths, other syntaxes) returns None and the
    object is parsed in full.
    """
    if not instance.metadata:
        return None
    try:
        info = pixels.frame_info_from_json(instance.metadata, index)
    except RenderError:
        return None
    if info is None:
        return None
    dtype = pixels.native_frame_layout(info, instance.transfer_syntax_uid)
    if dtype is None:
        return None
    frame_bytes = info.rows * info.columns * dtype.itemsize
    total = frame_bytes * info.number_of_frames
    if total % 2 or not 0 <= index < info.number_of_frames:
        return None
    start = instance.size - total
    explicit = instance.transfer_syntax_uid == pydicom.uid.ExplicitVRLittleEndian
    header_size = 12 if explicit else 8
    if start < 132 + header_size:
        return None
    with reader().open(instance.storage_key) as handle:
        if not getattr(handle, "seekable", lambda: False)():
            return None
        handle.seek(start - header_size)
        header = handle.read(header_size)
        if explicit:
            valid = (
                header[:4] == _PIXEL_DATA_TAG
                and header[4:6] in (b"OW", b"OB")
                and header[8:12] == total.to_bytes(4, "little")
            )
        else:
            valid = header[:4] == _PIXEL_DATA_TAG and header[4:8] == total.to_bytes(4, "little")
        if not valid:
            return None
        handle.seek(start + index * frame_bytes)
        data = handle.read(frame_bytes)
    if len(data) != frame_bytes:
        return None
    raw = np.frombuffer(data, dtype=dtype).reshape(info.rows, info.columns)
    return DecodedFrame(pixels=pixels.stored_values(raw, info), info=info)


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def read_frame(instance: Instance, index: int) -> DecodedFrame:
    """Frame ``index`` (0-based): straight from the object when stored natively, else decoded by pydicom."""
    try:
        return read_native_frame(instance, index) or pixels.decode_frame(load_dataset(instance), index)
    except FileNotFoundError:
        raise RenderError("the object is no longer in the archive's storage", status=404) from None
    except OSError as exc:
        raise RenderError(f"the archive's storage could not be read: {exc}", status=503) from exc


def decoded_frame(instance: Instance, frame_number: int) -> DecodedFrame:
    """Frame ``frame_number`` (1-based) of ``instance``, decoded once per process."""
    if frame_number < 1 or frame_number > max(instance.number_of_frames, 1):
        raise RenderError(
            f"frame {frame_number} does not exist; the instance has {instance.number_of_frames}", status=404
        )
    cache_id = (instance_cache_id(instance), frame_number - 1)
    from_volume = _frame_from_volume(cache_id)
    if from_volume is not None:
        return from_volume
    return decoded_cache().get_or_load(("frame", *cache_id), lambda: read_frame(instance, frame_number - 1))


def render_key(instance: Instance, frames: str, params: RenderParams, kind: str = "rendered") -> str:
    """Cache key and strong ETag of one rendering of ``instance``."""
    text = f"{pixels.ENGINE_VERSION}|{kind}|{instance.sha256}|{frames}|{params.key()}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def frame_image(frame: DecodedFrame, params: RenderParams) -> Image.Image:
    voi = pixels.choose_voi(frame, params.window, params.preset) if not frame.info.is_color else None
    display = pixels.to_display(frame, voi)
    return pixels.to_image(display, aspect=frame.info.aspect_scale(), viewport=params.viewport)


def render_cached(key: str) -> bytes | None:
    """An image already rendered under ``key`` (see :func:`render_key`) by any web worker, else None."""
    return render_cache().get(key)


def render_frame(instance: Instance, frame_number: int, params: RenderParams, *, kind: str = "rendered") -> bytes:
    """Encoded image of one frame, from the shared render cache when another worker made it."""
    key = render_key(instance, str(frame_number), params, kind)
    cache = render_cache()
    body = cache.get(key)
    if body is None:
        image = frame_image(decoded_frame(instance, frame_number), params)
        body = pixels.encode(image, params.media_type, params.quality)
        cache.set(key, body, timeout=settings.VIEWER_RENDER_CACHE_SECONDS)
    return body


def render_animation(instance: Instance, params: RenderParams) -> bytes:
    """All frames of a multi-frame instance as an animated GIF (a multi-frame rendered type)."""
    key = render_key(instance, "all", params, "animation")
    cache = render_cache()
    body = cache.get(key)
    if body is None:
        images = [frame_image(decoded_frame(instance, n), params) for n in range(1, instance.number_of_frames + 1)]
        rate = _frame_time_ms(instance)
        buffer = io.BytesIO()
        images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=rate, loop=0)
        body = buffer.getvalue()
        cache.set(key, body, timeout=settings.VIEWER_RENDER_CACHE_SECONDS)
    return body


def _frame_time_ms(instance: Instance) -> int:
    """Frame Time (0018,1063) from the metadata, else 10 frames per second."""
    value = (instance.metadata.get("00181063") or {}).get("Value") or []
    try:
        return max(20, int(float(value[0])))
    except (IndexError, TypeError, ValueError):
        return 100
