"""Transfer functions: the presets a radiologist expects and edits.

A transfer function maps a Hounsfield value to a colour and an opacity; its
points are ``(HU, red, green, blue)`` (0–1) and ``(HU, opacity)``. Composite
presets are shaded surfaces; MIP and MinIP project the brightest or darkest
value along each ray through a grey ramp (the window).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..pixels import RenderError

COMPOSITE, MIP, MINIP = "composite", "mip", "minip"
BLENDS = (COMPOSITE, MIP, MINIP)
MAX_POINTS = 32


@dataclass(frozen=True)
class TransferFunction:
    name: str
    blend: str
    colour: tuple[tuple[float, float, float, float], ...]
    opacity: tuple[tuple[float, float], ...]
    shade: bool = True
    ambient: float = 0.2
    diffuse: float = 0.8
    specular: float = 0.2
    # Window/level applied on top of the points: HU added, and width scaled about the points' centre.
    shift: float = 0.0
    scale: float = 1.0

    def _map(self, hu: float) -> float:
        centre = self.centre
        return centre + (hu - centre) * self.scale + self.shift

    @property
    def centre(self) -> float:
        values = [p[0] for p in self.opacity]
        return (min(values) + max(values)) / 2

    def colour_points(self) -> list[tuple[float, float, float, float]]:
        return [(self._map(hu), r, g, b) for hu, r, g, b in self.colour]

    def opacity_points(self) -> list[tuple[float, float]]:
        return [(self._map(hu), a) for hu, a in self.opacity]

    def windowed(self, *, shift: float = 0.0, scale: float = 1.0) -> TransferFunction:
        """The same function moved by ``shift`` HU and widened by ``scale`` (a window/level drag)."""
        return replace(self, shift=self.shift + shift, scale=min(max(self.scale * scale, 0.05), 20.0))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "blend": self.blend,
            "colour": [list(p) for p in self.colour_points()],
            "opacity": [list(p) for p in self.opacity_points()],
            "shade": self.shade,
        }


def _grey_ramp(name: str, blend: str, low: float, high: float) -> TransferFunction:
    return TransferFunction(
        name=name,
        blend=blend,
        colour=((low, 0.0, 0.0, 0.0), (high, 1.0, 1.0, 1.0)),
        opacity=((low, 1.0), (high, 1.0)),
        shade=False,
    )


PRESETS: dict[str, TransferFunction] = {
    "bone": TransferFunction(
        name="bone",
        blend=COMPOSITE,
        colour=((150, 0.55, 0.25, 0.15), (400, 0.9, 0.8, 0.65), (1200, 1.0, 1.0, 0.95), (3000, 1.0, 1.0, 1.0)),
        opacity=((150, 0.0), (400, 0.15), (700, 0.7), (3000, 0.85)),
    ),
    "soft_tissue": TransferFunction(
        name="soft_tissue",
        blend=COMPOSITE,
        colour=((-500, 0.3, 0.1, 0.05), (-100, 0.75, 0.45, 0.35), (60, 0.85, 0.55, 0.45), (300, 1.0, 0.95, 0.85)),
        opacity=((-500, 0.0), (-150, 0.0), (0, 0.05), (100, 0.3), (400, 0.8)),
    ),
    "cta": TransferFunction(
        name="cta",
        blend=COMPOSITE,
        colour=((100, 0.6, 0.05, 0.05), (250, 0.95, 0.3, 0.2), (450, 1.0, 0.85, 0.7), (1500, 1.0, 1.0, 1.0)),
        opacity=((100, 0.0), (180, 0.0), (260, 0.5), (600, 0.85)),
    ),
    "lung": TransferFunction(
        name="lung",
        blend=COMPOSITE,
        colour=((-1000, 0.0, 0.0, 0.0), (-900, 0.55, 0.65, 0.8), (-500, 0.85, 0.75, 0.7), (-200, 1.0, 0.9, 0.8)),
        opacity=((-1000, 0.0), (-950, 0.0), (-850, 0.08), (-500, 0.2), (-300, 0.0)),
    ),
    "mip": _grey_ramp("mip", MIP, -200, 800),
    "minip": _grey_ramp("minip", MINIP, -1000, -400),
}


def preset(name: str) -> TransferFunction:
    try:
        return PRESETS[name]
    except KeyError:
        raise RenderError(f"preset must be one of {', '.join(PRESETS)}") from None


def _points(value: Any, width: int, what: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_POINTS:
        raise RenderError(f"{what} needs 2 to {MAX_POINTS} points")
    points = []
    for point in value:
        if not isinstance(point, list | tuple) or len(point) != width:
            raise RenderError(f"each {what} point has {width} numbers")
        try:
            numbers = tuple(float(v) for v in point)
        except (TypeError, ValueError):
            raise RenderError(f"{what} points are numbers") from None
        if any(not 0.0 <= v <= 1.0 for v in numbers[1:]):
            raise RenderError(f"{what} values lie between 0 and 1")
        if not -5000 <= numbers[0] <= 40000:
            raise RenderError(f"{what} point {numbers[0]} HU is out of range")
        points.append(numbers)
    points.sort(key=lambda p: p[0])
    return tuple(points)


def edited(base: TransferFunction, changes: dict[str, Any]) -> TransferFunction:
    """``base`` with the points, blend or shading the user edited (validated)."""
    updates: dict[str, Any] = {}
    if "colour" in changes:
        updates["colour"] = _points(changes["colour"], 4, "colour")
    if "opacity" in changes:
        updates["opacity"] = _points(changes["opacity"], 2, "opacity")
    if "blend" in changes:
        if changes["blend"] not in BLENDS:
            raise RenderError(f"blend must be one of {', '.join(BLENDS)}")
        updates["blend"] = changes["blend"]
    if "shade" in changes:
        updates["shade"] = bool(changes["shade"])
    return replace(base, name="custom" if updates.keys() - {"shade"} else base.name, **updates)


@dataclass
class Clipping:
    """A clipping box as fractions (0–1) of each volume axis, planes (point and normal in mm), the table cut."""

    box: tuple[float, float, float, float, float, float] = (0.0, 1.0, 0.0, 1.0, 0.0, 1.0)
    planes: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = field(default_factory=list)
    table_cut: bool = False

    @classmethod
    def parse(cls, value: dict[str, Any]) -> Clipping:
        box = value.get("box", [0, 1, 0, 1, 0, 1])
        try:
            box_t = tuple(min(max(float(v), 0.0), 1.0) for v in box)
        except (TypeError, ValueError):
            raise RenderError("the clipping box is six numbers") from None
        if len(box_t) != 6 or any(box_t[i] >= box_t[i + 1] for i in (0, 2, 4)):
            raise RenderError("the clipping box is six fractions, each minimum below its maximum")
        planes = []
        for plane in value.get("planes", [])[:6]:
            try:
                origin = tuple(float(v) for v in plane["origin"])
                normal = tuple(float(v) for v in plane["normal"])
            except (KeyError, TypeError, ValueError):
                raise RenderError("a clipping plane has an origin and a normal") from None
            if len(origin) != 3 or len(normal) != 3 or not any(normal):
                raise RenderError("a clipping plane has an origin and a non-zero normal in 3D")
            planes.append((origin, normal))
        return cls(box=box_t, planes=planes, table_cut=bool(value.get("table_cut", False)))  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "planes": [{"origin": list(o), "normal": list(n)} for o, n in self.planes],
            "table_cut": self.table_cut,
        }
