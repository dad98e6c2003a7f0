"""One volume in VTK: the ray-cast scene a render session drives.

Volume frame: the decoded series as VTK sees it, x along the columns, y down
the rows, z along the slices, in millimetres from the first voxel. The axes
are orthogonal, so distances measured here are distances in the patient.
The voxels are not copied: VTK reads the decoded volume's numpy array.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..mpr import Volume
from . import offscreen
from .presets import COMPOSITE, MINIP, MIP, Clipping, TransferFunction

# Patient directions in DICOM's LPS system.
_ANTERIOR = np.array([0.0, -1.0, 0.0])
_HEAD = np.array([0.0, 0.0, 1.0])
VIEWS = {
    # name: (direction the camera looks along, view up), patient coordinates
    "anterior": (-_ANTERIOR, _HEAD),
    "posterior": (_ANTERIOR, _HEAD),
    "left": (np.array([-1.0, 0.0, 0.0]), _HEAD),
    "right": (np.array([1.0, 0.0, 0.0]), _HEAD),
    "superior": (-_HEAD, _ANTERIOR),
    "inferior": (_HEAD, _ANTERIOR),
}
# Body is anything denser than this; the table is what lies behind the body, separated by air.
_BODY_HU = -300.0
MAX_SIZE = 1024


@dataclass
class Camera:
    """Where the viewer looks from, in the volume frame (mm); parallel projection."""

    focal: np.ndarray
    direction: np.ndarray  # unit, from the eye into the scene
    up: np.ndarray  # unit, orthogonal to direction
    height_mm: float  # the height of the view in mm

    @property
    def right(self) -> np.ndarray:
        return np.cross(self.direction, self.up)

    def rotate(self, degrees_x: float, degrees_y: float) -> None:
        """Turn the object: a horizontal drag about the view-up axis, a vertical one about the screen's horizontal."""
        self.direction = _rotated(self.direction, self.up, -math.radians(degrees_x))
        axis = self.right
        self.direction = _rotated(self.direction, axis, -math.radians(degrees_y))
        self.up = _rotated(self.up, axis, -math.radians(degrees_y))
        self._orthonormalise()

    def roll(self, degrees: float) -> None:
        self.up = _rotated(self.up, self.direction, math.radians(degrees))
        self._orthonormalise()

    def zoom(self, factor: float) -> None:
        self.height_mm = min(max(self.height_mm / factor, 5.0), 5000.0)

    def pan(self, dx: float, dy: float) -> None:
        """Move the picture by ``dx``, ``dy`` fractions of the view's height (right, down)."""
        self.focal = self.focal - self.right * dx * self.height_mm + self.up * dy * self.height_mm

    def _orthonormalise(self) -> None:
        self.direction = self.direction / np.linalg.norm(self.direction)
        up = self.up - self.direction * float(np.dot(self.up, self.direction))
        self.up = up / np.linalg.norm(up)

    def describe(self) -> dict[str, Any]:
        return {
            "focal": [round(float(v), 3) for v in self.focal],
            "direction": [round(float(v), 5) for v in self.direction],
            "up": [round(float(v), 5) for v in self.up],
            "height_mm": round(self.height_mm, 3),
        }


def _rotated(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``v`` about the unit ``axis``."""
    axis = axis / np.linalg.norm(axis)
    return v * math.cos(angle) + np.cross(axis, v) * math.sin(angle) + axis * np.dot(axis, v) * (1 - math.cos(angle))


class VolumeScene:
    """A ray-cast rendering of one decoded volume; not thread-safe (one render thread drives it)."""

    def __init__(self, volume: Volume, *, reduce: int = 1) -> None:
        """A scene over ``volume``, or over every ``reduce``-th voxel along each axis (a quick preview)."""
        import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  the ray-cast image display helper
        from vtkmodules.util.numpy_support import numpy_to_vtk
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkRenderingCore import vtkRenderer, vtkVolume, vtkVolumeProperty
        from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper

        self.volume = volume
        self.reduce = reduce
        geom = volume.geometry
        # A reduced scene keeps its own, smaller copy; the full one is a view of the decoded volume.
        data = np.ascontiguousarray(volume.data[::reduce, ::reduce, ::reduce]) if reduce > 1 else volume.data
        slices, rows, columns = data.shape
        self.voxel_spacing = np.array([geom.column_spacing, geom.row_spacing, geom.slice_spacing], dtype=float)
        self.spacing = self.voxel_spacing * reduce
        self.extent_mm = self.spacing * (np.array([columns, rows, slices]) - 1)
        # Volume frame axis → patient direction (rows of this matrix).
        self.axes = np.array([geom.row_direction, geom.column_direction, geom.normal], dtype=float)
        image = vtkImageData()
        image.SetDimensions(columns, rows, slices)
        image.SetSpacing(*self.spacing)
        image.SetOrigin(0.0, 0.0, 0.0)
        scalars = numpy_to_vtk(data.reshape(-1), deep=False)  # a view: the volume stays the only copy
        scalars.SetName("values")
        image.GetPointData().SetScalars(scalars)
        self._image: Any = image
        self._keep: np.ndarray | None = data
        self.mapper = vtkFixedPointVolumeRayCastMapper()
        self.mapper.SetInputData(image)
        self.mapper.SetAutoAdjustSampleDistances(0)
        self.mapper.SetLockSampleDistanceToInputSpacing(0)
        self.mapper.SetNumberOfThreads(max(1, os.cpu_count() or 1))
        self.property = vtkVolumeProperty()
        self.property.SetInterpolationTypeToLinear()
        self.actor = vtkVolume()
        self.actor.SetMapper(self.mapper)
        self.actor.SetProperty(self.property)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)
        self.renderer.AddVolume(self.actor)
        self.window: Any = None
        self.size = (0, 0)
        self.camera = self.view("anterior")
        self.transfer: TransferFunction | None = None
        self.clipping = Clipping()
        self._table_mm: float | None = None

    # Camera ----------------------------------------------------------------

    def to_frame(self, patient_vector: np.ndarray) -> np.ndarray:
        return self.axes @ patient_vector

    def view(self, name: str) -> Camera:
        direction, up = VIEWS[name]
        centre = self.extent_mm / 2
        return Camera(
            focal=centre.copy(),
            direction=self.to_frame(direction),
            up=self.to_frame(up),
            height_mm=float(np.linalg.norm(self.extent_mm)) * 1.05,
        )

    def _apply_camera(self) -> None:
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        distance = float(np.linalg.norm(self.extent_mm)) * 2 + 10
        position = self.camera.focal - self.camera.direction * distance
        cam.SetFocalPoint(*self.camera.focal)
        cam.SetPosition(*position)
        cam.SetViewUp(*self.camera.up)
        cam.SetParallelScale(self.camera.height_mm / 2)
        cam.SetClippingRange(1.0, distance * 2)

    # Appearance ------------------------------------------------------------

    def set_transfer(self, transfer: TransferFunction) -> None:
        from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction
        from vtkmodules.vtkRenderingCore import vtkColorTransferFunction

        colour = vtkColorTransferFunction()
        for hu, r, g, b in transfer.colour_points():
            colour.AddRGBPoint(hu, r, g, b)
        opacity = vtkPiecewiseFunction()
        for hu, a in transfer.opacity_points():
            opacity.AddPoint(hu, a)
        self.property.SetColor(colour)
        self.property.SetScalarOpacity(opacity)
        shade = transfer.shade and transfer.blend == COMPOSITE
        self.property.SetShade(1 if shade else 0)
        self.property.SetAmbient(transfer.ambient)
        self.property.SetDiffuse(transfer.diffuse)
        self.property.SetSpecular(transfer.specular)
        if transfer.blend == MIP:
            self.mapper.SetBlendModeToMaximumIntensity()
        elif transfer.blend == MINIP:
            self.mapper.SetBlendModeToMinimumIntensity()
        else:
            self.mapper.SetBlendModeToComposite()
        self.transfer = transfer

    def set_clipping(self, clipping: Clipping) -> None:
        from vtkmodules.vtkCommonDataModel import vtkPlane, vtkPlaneCollection

        box = clipping.box
        if box != (0.0, 1.0, 0.0, 1.0, 0.0, 1.0):
            self.mapper.CroppingOn()
            bounds = []
            for axis in range(3):
                bounds += [box[2 * axis] * self.extent_mm[axis], box[2 * axis + 1] * self.extent_mm[axis]]
            self.mapper.SetCroppingRegionPlanes(*bounds)
            self.mapper.SetCroppingRegionFlagsToSubVolume()
        else:
            self.mapper.CroppingOff()
        planes = vtkPlaneCollection()
        for origin, normal in clipping.planes:
            plane = vtkPlane()
            plane.SetOrigin(*origin)
            plane.SetNormal(*normal)  # what lies on the normal's side stays
            planes.AddItem(plane)
        if clipping.table_cut:
            cut = self.table_cut_plane()
            if cut is not None:
                plane = vtkPlane()
                plane.SetOrigin(*cut[0])
                plane.SetNormal(*cut[1])
                planes.AddItem(plane)
        self.mapper.SetClippingPlanes(planes)
        self.clipping = clipping

    def table_cut_plane(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A plane just behind the patient's back: the table (separated from the body by air) lies beyond it.

        Found along the volume axis closest to the patient's anterior–posterior
        direction: the longest run of planes that hold body is the patient.
        """
        posterior = self.to_frame(-_ANTERIOR)
        axis = int(np.argmax(np.abs(posterior)))
        sign = 1 if posterior[axis] > 0 else -1
        if self._table_mm is None:
            numpy_axis = 2 - axis  # numpy holds (slices, rows, columns) = (z, y, x)
            sample = self.volume.data[::2, ::2, ::2]
            others = tuple(a for a in range(3) if a != numpy_axis)
            dense = (sample > _BODY_HU).mean(axis=others) > 0.01
            best, start, runs = (0, 0), None, []
            for i, flag in enumerate([*dense.tolist(), False]):
                if flag and start is None:
                    start = i
                elif not flag and start is not None:
                    runs.append((start, i - 1))
                    start = None
            if not runs:
                return None
            best = max(runs, key=lambda run: run[1] - run[0])
            edge = (best[1] + 1) * 2 if sign > 0 else (best[0] - 1) * 2
            self._table_mm = float(min(max(edge, 0), self.volume.data.shape[numpy_axis] - 1)) * self.voxel_spacing[axis]
        origin = self.extent_mm / 2
        origin[axis] = self._table_mm
        normal = np.zeros(3)
        normal[axis] = -sign  # keep the anterior side
        return origin, normal

    # Rendering -------------------------------------------------------------

    def _ensure_window(self, width: int, height: int) -> None:
        if self.window is None:
            self.window = offscreen.render_window(width, height)
            self.window.AddRenderer(self.renderer)
        if self.size != (width, height):
            self.window.SetSize(width, height)
            self.size = (width, height)

    def render(self, width: int, height: int, *, interactive: bool = False, flat: bool = False) -> np.ndarray:
        """The picture as an (height, width, 3) uint8 array, top row first.

        Full frames sample each ray once per voxel spacing; interactive ones
        at 1.6 times that distance and cast a ray for every 1.5 pixels: about
        a quarter of the work, for dragging. A ``flat`` frame leaves shading
        out: VTK computes the shading gradients of every voxel before a scene's
        first shaded frame, so a flat one can be shown before that is done.
        """
        shaded = bool(self.property.GetShade())
        if flat and shaded:
            self.property.SetShade(0)
            try:
                return self.render(width, height, interactive=interactive)
            finally:
                self.property.SetShade(1)
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        width, height = max(16, min(width, MAX_SIZE)), max(16, min(height, MAX_SIZE))
        self._ensure_window(width, height)
        step = float(self.spacing.min())
        self.mapper.SetSampleDistance(step * (1.6 if interactive else 1.0))
        self.mapper.SetImageSampleDistance(1.5 if interactive else 1.0)
        self.mapper.SetInteractiveSampleDistance(step * 1.6)
        self._apply_camera()
        self.window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.ShouldRerenderOff()
        grab.Update()
        output = grab.GetOutput()
        w, h, _ = output.GetDimensions()
        pixels = vtk_to_numpy(output.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
        return np.ascontiguousarray(pixels[::-1])

    def close(self) -> None:
        """Release the OpenGL context and VTK's buffers; the decoded volume stays with its cache."""
        if self.window is not None:
            self.window.RemoveRenderer(self.renderer)
            self.window.Finalize()
            self.window = None
        self.renderer.RemoveAllViewProps()
        self.mapper.RemoveAllInputs()
        self._image = None
        self._keep = None

    @property
    def working_bytes(self) -> int:
        """Memory VTK adds on top of the volume: gradients for shading (3 bytes a voxel) and the window."""
        voxels = int(np.prod(self.volume.data.shape)) // self.reduce**3
        own_copy = voxels * self.volume.data.itemsize if self.reduce > 1 else 0
        return voxels * 3 + own_copy + MAX_SIZE * MAX_SIZE * 8


def encode_frame(pixels: np.ndarray, media_type: str, quality: int) -> bytes:
    """JPEG or WebP bytes of an RGB frame."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if media_type == "image/webp":
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
