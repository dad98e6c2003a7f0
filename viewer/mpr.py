"""Multiplanar reformatting: series volumes, axial/coronal/sagittal planes and slabs.

A series is reformattable when its frames share size and orientation and
their Image Position (Patient) values lie along the normal of that orientation
(PS3.3 C.7.6.2.1.1). Slices are sorted by their position projected on the
normal, not by Instance Number. Each volume axis is labelled with the patient
axis (LPS) it runs closest to, and every plane is shown in the conventional
radiological orientation: axial with anterior up and the patient's right on
the viewer's left, coronal and sagittal with the head up. Pixels are stretched
to their physical aspect from the in-plane spacing and the slice spacing.

Geometry comes from the archive's stored metadata (no pixel reads); the
volume's modality values are decoded once and kept in the process's LRU.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archive.models import Instance, Series

from . import pixels
from .caches import decoded_cache
from .pixels import FrameInfo, RenderError, Voi, Window
from .render import instance_cache_id, load_dataset, read_native_frame, register_volume_slices

PLANES = ("axial", "coronal", "sagittal")
MODES = ("mip", "minip", "avg")
# Patient axis held fixed by each plane (LPS: 0 = x left, 1 = y posterior, 2 = z head).
_FIXED = {"axial": 2, "coronal": 1, "sagittal": 0}
# (patient axis, direction) shown down the rows and across the columns of each plane.
_DISPLAY = {
    "axial": ((1, +1), (0, +1)),  # anterior→posterior down, right→left across
    "coronal": ((2, -1), (0, +1)),  # head→feet down, right→left across
    "sagittal": ((2, -1), (1, +1)),  # head→feet down, anterior→posterior across
}
ORIENTATION_TOLERANCE = 1e-3
MAX_SPACING_SPREAD = 0.2  # fraction of the median slice gap tolerated before refusing


# Geometry from DICOM JSON metadata --------------------------------------------


def _json_values(metadata: dict, tag: str) -> list:
    element = metadata.get(tag) or {}
    return list(element.get("Value") or [])


def _floats(values: list) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return []
    return out


def _functional(metadata: dict, frame: int, sequence: str, tag: str) -> list:
    """A value from the per-frame, then shared functional groups (PS3.3 C.7.6.16)."""
    per_frame = _json_values(metadata, "52009230")
    if frame < len(per_frame):
        items = _json_values(per_frame[frame], sequence)
        if items and _json_values(items[0], tag):
            return _json_values(items[0], tag)
    shared = _json_values(metadata, "52009229")
    if shared:
        items = _json_values(shared[0], sequence)
        if items and _json_values(items[0], tag):
            return _json_values(items[0], tag)
    return _json_values(metadata, tag)


@dataclass
class SliceRef:
    instance: Instance
    frame: int  # 0-based
    position: np.ndarray


@dataclass
class Geometry:
    """A stack of parallel slices sorted along its normal."""

    slices: list[SliceRef]
    row_direction: np.ndarray  # along a row: direction of increasing column index (IOP[0:3])
    column_direction: np.ndarray  # down a column: direction of increasing row index (IOP[3:6])
    normal: np.ndarray
    rows: int
    columns: int
    row_spacing: float  # between rows (mm)
    column_spacing: float  # between columns (mm)
    slice_spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slices), self.rows, self.columns)

    def axis_directions(self) -> list[np.ndarray]:
        """Unit vectors of volume axes 0 (slices), 1 (rows), 2 (columns)."""
        return [self.normal, self.column_direction, self.row_direction]

    def spacings(self) -> list[float]:
        return [self.slice_spacing, self.row_spacing, self.column_spacing]

    def patient_axes(self) -> list[tuple[int, int]]:
        """(patient axis, sign) each volume axis runs closest to; a permutation of the three axes."""
        directions = self.axis_directions()
        taken: set[int] = set()
        result: list[tuple[int, int]] = [(0, 1)] * 3
        # Most decisive axes first, so an oblique axis cannot steal a clear one's label.
        order = sorted(range(3), key=lambda a: -float(np.max(np.abs(directions[a]))))
        for axis in order:
            ranked = sorted(range(3), key=lambda p: -abs(float(directions[axis][p])))
            patient = next(p for p in ranked if p not in taken)
            taken.add(patient)
            result[axis] = (patient, 1 if directions[axis][patient] >= 0 else -1)
        return result

    def plane_layout(self, plane: str) -> PlaneLayout:
        labels = self.patient_axes()
        by_patient = {p: (axis, sign) for axis, (p, sign) in enumerate(labels)}
        fixed_axis, fixed_sign = by_patient[_FIXED[plane]]
        (row_patient, row_dir), (col_patient, col_dir) = _DISPLAY[plane]
        row_axis, row_sign = by_patient[row_patient]
        col_axis, col_sign = by_patient[col_patient]
        spacings = self.spacings()
        return PlaneLayout(
            plane=plane,
            fixed_axis=fixed_axis,
            reverse_index=fixed_sign < 0,
            row_axis=row_axis,
            column_axis=col_axis,
            flip_rows=row_sign != row_dir,
            flip_columns=col_sign != col_dir,
            count=self.shape[fixed_axis],
            rows=self.shape[row_axis],
            columns=self.shape[col_axis],
            row_spacing=spacings[row_axis],
            column_spacing=spacings[col_axis],
            spacing=spacings[fixed_axis],
        )

    def describe(self) -> dict[str, Any]:
        """What a client needs to navigate reformats of this series."""
        out: dict[str, Any] = {}
        for plane in PLANES:
            layout = self.plane_layout(plane)
            out[plane] = {
                "count": layout.count,
                "rows": layout.rows,
                "columns": layout.columns,
                "row_spacing": round(layout.row_spacing, 6),
                "column_spacing": round(layout.column_spacing, 6),
                "spacing": round(layout.spacing, 6),
            }
        return out


@dataclass(frozen=True)
class PlaneLayout:
    plane: str
    fixed_axis: int
    reverse_index: bool  # the volume axis runs against the patient axis
    row_axis: int
    column_axis: int
    flip_rows: bool
    flip_columns: bool
    count: int
    rows: int
    columns: int
    row_spacing: float
    column_spacing: float
    spacing: float


def geometry(instances: list[Instance]) -> Geometry:
    """The volume geometry of a series' instances; raises RenderError when it is not a volume."""
    slices: list[SliceRef] = []
    orientation = None
    size = None
    spacing = None
    for instance in instances:
        meta = instance.metadata or {}
        for frame in range(max(instance.number_of_frames, 1)):
            iop = _floats(_functional(meta, frame, "00209116", "00200037"))
            ipp = _floats(_functional(meta, frame, "00209113", "00200032"))
            ps = _floats(_functional(meta, frame, "00289110", "00280030"))
            if len(iop) != 6 or len(ipp) != 3 or len(ps) != 2:
                raise RenderError("the series lacks the position, orientation or spacing needed for MPR", status=422)
            iop_arr = np.array(iop)
            if orientation is None:
                orientation, size, spacing = iop_arr, (instance.rows, instance.columns), ps
            elif np.max(np.abs(iop_arr - orientation)) > ORIENTATION_TOLERANCE or size != (
                instance.rows,
                instance.columns,
            ):
                raise RenderError("the series' images differ in orientation or size", status=422)
            slices.append(SliceRef(instance=instance, frame=frame, position=np.array(ipp)))
    if len(slices) < 3 or orientation is None or size is None or spacing is None:
        raise RenderError("MPR needs at least three parallel slices", status=422)
    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    distances = np.array([float(np.dot(s.position, normal)) for s in slices])
    gaps = np.diff(distances)
    median_gap = float(np.median(gaps))
    if median_gap <= 0 or np.any(gaps <= 1e-6):
        raise RenderError("two slices of the series share a position", status=422)
    if float(np.max(np.abs(gaps - median_gap))) > MAX_SPACING_SPREAD * median_gap:
        raise RenderError("the series' slices are not evenly spaced", status=422)
    return Geometry(
        slices=slices,
        row_direction=row_dir,
        column_direction=col_dir,
        normal=normal,
        rows=int(size[0] or 0),
        columns=int(size[1] or 0),
        row_spacing=spacing[0],
        column_spacing=spacing[1],
        slice_spacing=median_gap,
    )


def series_geometry(series: Series) -> Geometry:
    # Whole rows: the decoding threads must not go back to the database.
    return geometry(list(series.instances.all()))


def try_describe(series: Series, instances: list[Instance]) -> dict[str, Any] | None:
    try:
        return geometry(instances).describe()
    except RenderError:
        return None


# Volumes -------------------------------------------------------------------


@dataclass(eq=False)
class Volume:
    """Modality values of a series as (slices, rows, columns), int16 when exact, else float32."""

    data: np.ndarray
    geometry: Geometry
    infos: list[FrameInfo]
    default_window: Window | None = None
    _range: tuple[float, float] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def value_range(self) -> tuple[float, float]:
        if self._range is None:
            self._range = (float(self.data.min()), float(self.data.max()))
        return self._range


def volume_key(series: Series) -> tuple:
    """The cache key of a series' volume: changes whenever an instance is added or replaced.

    Costs one narrow query, so a warm request never parses metadata.
    """
    members = sorted(
        (str(pk), sha, frames) for pk, sha, frames in series.instances.values_list("pk", "sha256", "number_of_frames")
    )
    digest = hashlib.sha256(repr(members).encode()).hexdigest()
    return ("volume", str(series.pk), digest)


def _exact_int16(arr: np.ndarray, info: FrameInfo) -> int | None:
    """The integer intercept when ``slope == 1`` maps ``arr`` into int16 exactly, else None."""
    if info.modality_lut is not None or info.slope != 1 or not float(info.intercept).is_integer():
        return None
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        return None
    intercept = int(info.intercept)
    if int(arr.min()) + intercept < -32768 or int(arr.max()) + intercept > 32767:
        return None
    return intercept


def load_volume(geom: Geometry) -> Volume:
    """Decode every slice straight into one int16 array of modality values.

    Worker threads overlap file reads, codecs and numpy work (all release the
    GIL for their heavy part). A slice whose rescaling is not an exact int16
    mapping (fractional slope, LUT, out of range) turns the volume float32.
    """
    data: np.ndarray = np.empty(geom.shape, dtype=np.int16)
    infos: list[Any] = [None] * len(geom.slices)
    inexact: dict[int, np.ndarray] = {}
    by_instance: dict[Any, list[int]] = {}
    for index, ref in enumerate(geom.slices):
        by_instance.setdefault(ref.instance.pk, []).append(index)

    def store(index: int, frame: pixels.DecodedFrame) -> None:
        if frame.info.is_color:
            raise RenderError("MPR needs grayscale images", status=422)
        infos[index] = frame.info
        intercept = _exact_int16(frame.pixels, frame.info)
        if intercept is None:
            inexact[index] = pixels.modality_values(frame.pixels, frame.info).astype(np.float32)
        else:
            np.add(frame.pixels, intercept, out=data[index], casting="unsafe")

    def work(indices: list[int]) -> None:
        instance = geom.slices[indices[0]].instance
        pending = []
        for index in indices:
            frame = read_native_frame(instance, geom.slices[index].frame)
            if frame is None:
                pending.append(index)
            else:
                store(index, frame)
        if pending:  # compressed or unusual objects: parse once, decode each frame
            ds = load_dataset(instance)
            for index in pending:
                store(index, pixels.decode_frame(ds, geom.slices[index].frame))

    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, by_instance.values()))
    if inexact:
        values = data.astype(np.float32)
        for index, plane in inexact.items():
            values[index] = plane
        data = values
    windows = infos[len(infos) // 2].windows
    return Volume(data=data, geometry=geom, infos=infos, default_window=windows[0] if windows else None)


def series_volume(series: Series, key: tuple | None = None) -> Volume:
    """The decoded volume of ``series`` from this process's LRU, loading it once."""
    key = key or volume_key(series)
    volume = decoded_cache().get_or_load(key, lambda: load_volume(series_geometry(series)))
    register_volume_slices(key, [(instance_cache_id(s.instance), s.frame) for s in volume.geometry.slices])
    return volume


# Reformatting ----------------------------------------------------------------


def reformat(volume: Volume, plane: str, index: int, *, slab_mm: float = 0.0, mode: str = "mip") -> np.ndarray:
    """The 2-D plane ``index`` of ``plane`` in display orientation; a slab when ``slab_mm`` > 0.

    ``index`` counts from the patient's right (sagittal), front (coronal) or
    feet (axial).
    A slab covers round(slab_mm / spacing) planes centred on ``index`` and is
    reduced by maximum (MIP), minimum (MinIP) or mean intensity.
    """
    if plane not in PLANES:
        raise RenderError(f"plane must be one of {', '.join(PLANES)}")
    if mode not in MODES:
        raise RenderError(f"mode must be one of {', '.join(MODES)}")
    layout = volume.geometry.plane_layout(plane)
    if index < 0 or index >= layout.count:
        raise RenderError(f"{plane} position {index} is outside 0–{layout.count - 1}", status=404)
    # Plane indices count along the patient axis (right→left, anterior→posterior,
    # feet→head) whichever way the volume was acquired.
    centre = layout.count - 1 - index if layout.reverse_index else index
    thickness = max(1, int(round(slab_mm / layout.spacing))) if slab_mm > 0 else 1
    start = max(0, min(centre - thickness // 2, layout.count - thickness))
    taken = np.take(volume.data, range(start, start + thickness), axis=layout.fixed_axis)
    if thickness == 1:
        plane_data = np.squeeze(taken, axis=layout.fixed_axis)
    elif mode == "mip":
        plane_data = taken.max(axis=layout.fixed_axis)
    elif mode == "minip":
        plane_data = taken.min(axis=layout.fixed_axis)
    else:
        mean = taken.mean(axis=layout.fixed_axis, dtype=np.float32)
        plane_data = np.rint(mean).astype(np.int16) if volume.data.dtype == np.int16 else mean
    # The remaining two axes keep their order; put the display-row axis first.
    remaining = [a for a in range(3) if a != layout.fixed_axis]
    if remaining.index(layout.row_axis) != 0:
        plane_data = plane_data.T
    if layout.flip_rows:
        plane_data = plane_data[::-1, :]
    if layout.flip_columns:
        plane_data = plane_data[:, ::-1]
    return plane_data


def plane_aspect(volume: Volume, plane: str) -> float:
    layout = volume.geometry.plane_layout(plane)
    return layout.row_spacing / layout.column_spacing


def volume_voi(volume: Volume, window: Window | None, preset: int | None) -> Voi:
    if window is not None:
        return Voi(window=window)
    info = volume.infos[len(volume.infos) // 2]
    if preset is not None and 0 <= preset < len(info.windows):
        return Voi(window=info.windows[preset])
    if volume.default_window is not None:
        return Voi(window=volume.default_window)
    lo, hi = volume.value_range
    return Voi(window=Window((lo + hi) / 2, max(hi - lo, 1.0), pixels.LINEAR_EXACT, "AUTO"))
