"""Oblique and curved reformats of a decoded volume, in the volume frame (mm).

The volume frame is the one the 3D scene uses (x along the columns, y down
the rows, z along the slices, millimetres from the first voxel), so a point
picked in any view means the same place in every other view: the 3D cursor.
Values are trilinearly interpolated modality values (HU for CT); samples
outside the volume are air.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..mpr import Volume
from ..pixels import RenderError

OUTSIDE = -1024.0
MAX_PIXELS = 1024
MAX_SLAB_SAMPLES = 96
MODES = ("mip", "minip", "avg")
BASE_PLANES = ("axial", "coronal", "sagittal")


def spacing(volume: Volume) -> np.ndarray:
    g = volume.geometry
    return np.array([g.column_spacing, g.row_spacing, g.slice_spacing], dtype=float)


def extent(volume: Volume) -> np.ndarray:
    slices, rows, columns = volume.data.shape
    return spacing(volume) * (np.array([columns, rows, slices]) - 1)


def sample(volume: Volume, points: np.ndarray) -> np.ndarray:
    """Trilinear values at ``points`` (..., 3) given in mm of the volume frame."""
    shape = points.shape[:-1]
    flat = points.reshape(-1, 3) / spacing(volume)
    x, y, z = flat[:, 0], flat[:, 1], flat[:, 2]
    data = volume.data
    slices, rows, columns = data.shape
    inside = (x >= 0) & (y >= 0) & (z >= 0) & (x <= columns - 1) & (y <= rows - 1) & (z <= slices - 1)
    x0 = np.clip(np.floor(x).astype(np.intp), 0, max(columns - 2, 0))
    y0 = np.clip(np.floor(y).astype(np.intp), 0, max(rows - 2, 0))
    z0 = np.clip(np.floor(z).astype(np.intp), 0, max(slices - 2, 0))
    fx, fy, fz = (np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1), np.clip(z - z0, 0, 1))
    x1, y1, z1 = np.minimum(x0 + 1, columns - 1), np.minimum(y0 + 1, rows - 1), np.minimum(z0 + 1, slices - 1)
    c00 = data[z0, y0, x0] * (1 - fx) + data[z0, y0, x1] * fx
    c01 = data[z0, y1, x0] * (1 - fx) + data[z0, y1, x1] * fx
    c10 = data[z1, y0, x0] * (1 - fx) + data[z1, y0, x1] * fx
    c11 = data[z1, y1, x0] * (1 - fx) + data[z1, y1, x1] * fx
    values = (c00 * (1 - fy) + c01 * fy) * (1 - fz) + (c10 * (1 - fy) + c11 * fy) * fz
    values = np.where(inside, values, OUTSIDE).astype(np.float32)
    return values.reshape(shape)


def base_axes(volume: Volume, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """Screen right and down of a standard plane, in the volume frame, in radiological display.

    Axial: right = patient's left (+x), down = posterior (+y); coronal: right =
    patient's left, down = feet (-z); sagittal: right = posterior, down = feet.
    """
    if plane not in BASE_PLANES:
        raise RenderError(f"plane must be one of {', '.join(BASE_PLANES)}")
    g = volume.geometry
    to_frame = np.array([g.row_direction, g.column_direction, g.normal], dtype=float)
    patient = {
        "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
        "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
        "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    }[plane]
    return to_frame @ np.array(patient[0]), to_frame @ np.array(patient[1])


def rotated_axes(right: np.ndarray, down: np.ndarray, tilt: float, spin: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn the plane ``tilt`` degrees about its horizontal axis and ``spin`` degrees about its vertical axis."""

    def rot(v: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
        a = np.radians(degrees)
        axis = axis / np.linalg.norm(axis)
        return v * np.cos(a) + np.cross(axis, v) * np.sin(a) + axis * np.dot(axis, v) * (1 - np.cos(a))

    down = rot(down, right, tilt)
    right = rot(right, down, spin)
    return right / np.linalg.norm(right), down / np.linalg.norm(down)


@dataclass
class Plane:
    """A rectangle in the volume frame: ``centre``, unit ``right`` and ``down``, size in pixels of ``pixel_mm``."""

    centre: np.ndarray
    right: np.ndarray
    down: np.ndarray
    width: int
    height: int
    pixel_mm: float

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.right, self.down)
        return n / np.linalg.norm(n)

    def points(self, offset: float = 0.0) -> np.ndarray:
        cols = (np.arange(self.width) + 0.5 - self.width / 2) * self.pixel_mm
        rows = (np.arange(self.height) + 0.5 - self.height / 2) * self.pixel_mm
        grid = self.centre + rows[:, None, None] * self.down + cols[None, :, None] * self.right + self.normal * offset
        return grid

    def to_volume(self, column: float, row: float) -> np.ndarray:
        """The volume-frame point under pixel (``column``, ``row``) of the picture."""
        return (
            self.centre
            + (column - self.width / 2) * self.pixel_mm * self.right
            + (row - self.height / 2) * self.pixel_mm * self.down
        )


def check_size(width: int, height: int) -> None:
    if not (8 <= width <= MAX_PIXELS and 8 <= height <= MAX_PIXELS):
        raise RenderError(f"the picture is 8 to {MAX_PIXELS} pixels on each side")


def oblique(volume: Volume, plane: Plane, *, slab_mm: float = 0.0, mode: str = "mip") -> np.ndarray:
    """The values on ``plane``; a slab ``slab_mm`` thick along its normal reduced by MIP, MinIP or average."""
    check_size(plane.width, plane.height)
    if mode not in MODES:
        raise RenderError(f"mode must be one of {', '.join(MODES)}")
    if slab_mm <= 0:
        return sample(volume, plane.points())
    step = float(spacing(volume).min())
    # An odd count, so the plane itself is one of the samples.
    half = int(min(max(1, round(slab_mm / 2 / step)), MAX_SLAB_SAMPLES // 2))
    count = 2 * half + 1
    offsets = np.linspace(-slab_mm / 2, slab_mm / 2, count)
    result: np.ndarray | None = None
    for offset in offsets:
        values = sample(volume, plane.points(offset))
        if result is None:
            result = values
        elif mode == "mip":
            np.maximum(result, values, out=result)
        elif mode == "minip":
            np.minimum(result, values, out=result)
        else:
            result += values
    assert result is not None
    return result / count if mode == "avg" else result


# Curved reformats ------------------------------------------------------------------


@dataclass
class Centreline:
    """A path resampled every ``step`` mm along its length, with a rotation-minimising frame at each point."""

    points: np.ndarray  # (n, 3)
    tangents: np.ndarray
    normals: np.ndarray  # across the straightened picture
    binormals: np.ndarray
    step: float

    @property
    def length_mm(self) -> float:
        return self.step * (len(self.points) - 1)


def centreline(path: list[list[float]] | np.ndarray, step: float, reference: np.ndarray) -> Centreline:
    """The clicked ``path`` (mm, at least two points) as a smooth centre line (Catmull–Rom through the clicks).

    Frames are carried along by parallel transport from ``reference`` (the
    view's normal, projected), so the straightened picture does not twist.
    """
    nodes = np.asarray(path, dtype=float)
    if nodes.ndim != 2 or nodes.shape[1] != 3 or not 2 <= len(nodes) <= 64:
        raise RenderError("a curved reformat needs 2 to 64 points of three coordinates")
    keep = np.concatenate([[True], np.linalg.norm(np.diff(nodes, axis=0), axis=1) > 1e-6])
    nodes = nodes[keep]
    if len(nodes) < 2:
        raise RenderError("the path's points coincide")
    padded = np.vstack([2 * nodes[0] - nodes[1], nodes, 2 * nodes[-1] - nodes[-2]])
    dense = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        for t in np.linspace(0, 1, 24, endpoint=False):
            dense.append(
                0.5
                * (
                    2 * p1
                    + (-p0 + p2) * t
                    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                    + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
                )
            )
    dense.append(nodes[-1])
    curve = np.array(dense)
    lengths = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    total = lengths[-1]
    count = int(total // step) + 1
    if count > 4096:
        raise RenderError("the path is too long for this pixel size")
    at = np.linspace(0, step * (count - 1), count)
    points = np.stack([np.interp(at, lengths, curve[:, k]) for k in range(3)], axis=1)
    tangents = np.gradient(points, axis=0) if count > 1 else np.zeros_like(points)
    tangents /= np.maximum(np.linalg.norm(tangents, axis=1, keepdims=True), 1e-9)
    normal = reference - tangents[0] * np.dot(reference, tangents[0])
    if np.linalg.norm(normal) < 1e-6:  # the path starts along the reference: any perpendicular will do
        normal = np.cross(tangents[0], [1.0, 0.0, 0.0])
        if np.linalg.norm(normal) < 1e-6:
            normal = np.cross(tangents[0], [0.0, 1.0, 0.0])
    normals = [normal / np.linalg.norm(normal)]
    for i in range(1, count):
        n = normals[-1] - tangents[i] * np.dot(normals[-1], tangents[i])
        norm = np.linalg.norm(n)
        normals.append(n / norm if norm > 1e-9 else normals[-1])
    normals_arr = np.array(normals)
    binormals = np.cross(tangents, normals_arr)
    return Centreline(points, tangents, normals_arr, binormals, step)


def straightened(volume: Volume, line: Centreline, width_mm: float) -> np.ndarray:
    """The vessel laid straight: one row per step along the path, columns across it (along the normals)."""
    columns = max(8, int(round(width_mm / line.step)))
    check_size(columns, max(len(line.points), 8))
    offsets = (np.arange(columns) + 0.5 - columns / 2) * line.step
    grid = line.points[:, None, :] + offsets[None, :, None] * line.normals[:, None, :]
    return sample(volume, grid)


def cross_section(volume: Volume, line: Centreline, at_mm: float, width_mm: float) -> tuple[np.ndarray, Plane]:
    """The plane across the path ``at_mm`` along it (perpendicular to the path there)."""
    index = int(round(min(max(at_mm, 0.0), line.length_mm) / line.step))
    size = max(8, int(round(width_mm / line.step)))
    plane = Plane(line.points[index], line.normals[index], line.binormals[index], size, size, line.step)
    return oblique(volume, plane), plane
