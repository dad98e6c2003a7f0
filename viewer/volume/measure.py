"""Measurements in 3D, in millimetres of the patient: distances, angles, a region's volume."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..mpr import Volume
from ..pixels import RenderError
from .reslice import extent, spacing

MAX_REGION_FRACTION = 0.5  # a region that floods half the volume has leaked out of the structure


def _point(value: Any, volume: Volume) -> np.ndarray:
    try:
        point = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise RenderError("a point is three numbers (mm)") from None
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise RenderError("a point is three numbers (mm)")
    margin = 1.0
    if np.any(point < -margin) or np.any(point > extent(volume) + margin):
        raise RenderError("the point lies outside the volume")
    return point


def distance(volume: Volume, a: Any, b: Any) -> float:
    return float(np.linalg.norm(_point(b, volume) - _point(a, volume)))


def angle(volume: Volume, a: Any, vertex: Any, b: Any) -> float:
    """The angle at ``vertex`` between the rays to ``a`` and ``b``, in degrees."""
    v = _point(vertex, volume)
    u, w = _point(a, volume) - v, _point(b, volume) - v
    if np.linalg.norm(u) < 1e-6 or np.linalg.norm(w) < 1e-6:
        raise RenderError("an angle needs three distinct points")
    cosine = float(np.dot(u, w) / (np.linalg.norm(u) * np.linalg.norm(w)))
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def region(volume: Volume, seed: Any, low: float, high: float) -> dict[str, Any]:
    """The connected region of voxels within [``low``, ``high``] around ``seed`` (6-connected seed fill).

    Returns its volume in mm³ (voxel count × voxel volume), voxel count and
    bounding box (mm); refuses a seed outside the range or a region that
    floods most of the volume.
    """
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkImagingMorphological import vtkImageThresholdConnectivity

    point = _point(seed, volume)
    if not low <= high:
        raise RenderError("the range's low end is above its high end")
    step = spacing(volume)
    data = volume.data
    index = np.clip(np.round(point / step).astype(int), 0, np.array(data.shape[::-1]) - 1)
    value = float(data[index[2], index[1], index[0]])
    if not low <= value <= high:
        raise RenderError(f"the seed's value {value:g} lies outside {low:g}–{high:g}")
    image = vtkImageData()
    slices, rows, columns = data.shape
    image.SetDimensions(columns, rows, slices)
    image.SetSpacing(*step)
    image.GetPointData().SetScalars(numpy_to_vtk(data.reshape(-1), deep=False))
    seeds = vtkPoints()
    seeds.InsertNextPoint(*(index * step))
    fill = vtkImageThresholdConnectivity()
    fill.SetInputData(image)
    fill.SetSeedPoints(seeds)
    fill.ThresholdBetween(low, high)
    fill.SetNeighborhoodRadius(0, 0, 0)  # the voxel itself decides, not its neighbours
    fill.ReplaceInOn()
    fill.SetInValue(1)
    fill.ReplaceOutOn()
    fill.SetOutValue(0)
    fill.Update()
    mask = vtk_to_numpy(fill.GetOutput().GetPointData().GetScalars()).reshape(data.shape)
    voxels = int(mask.sum(dtype=np.int64))
    if voxels > MAX_REGION_FRACTION * mask.size:
        raise RenderError("the region floods most of the volume: narrow the range")
    where = np.argwhere(mask)
    low_corner = where.min(axis=0)[::-1] * step
    high_corner = where.max(axis=0)[::-1] * step
    return {
        "volume_mm3": round(voxels * float(np.prod(step)), 3),
        "voxels": voxels,
        "box_mm": [[round(float(v), 3) for v in low_corner], [round(float(v), 3) for v in high_corner]],
        "seed_value": value,
    }
