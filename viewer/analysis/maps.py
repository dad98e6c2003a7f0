"""Voxel-wise pharmacokinetic maps, all voxels at once.

Tofts, extended Tofts and Patlak are linear in their parameters once written
with integrals (Murase, MRM 2004;51:858):

    C(t) = Ktrans·∫Cp − kep·∫C                 (Tofts)
    C(t) = (Ktrans + kep·vp)·∫Cp − kep·∫C + vp·Cp   (extended Tofts)
    C(t) = Ktrans·∫Cp + vp·Cp                 (Patlak)

so each voxel is a small linear least-squares problem. They are solved
together through their normal equations (NumPy, in blocks), tens of thousands
of voxels per second where a per-voxel non-linear fit manages hundreds; the
region fit (``fitting``) is the non-linear reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAP_MODELS = ("tofts", "extended_tofts", "patlak")
BLOCK = 16384

# What each map is, for the DICOM Parametric Map and the overlay.
MAP_UNITS = {
    "ktrans": ("Ktrans", "1/min"),
    "ve": ("ve", "mL/mL"),
    "kep": ("kep", "1/min"),
    "vp": ("vp", "mL/mL"),
    "iauc60": ("iAUC60", "mM.s"),
}


class Cancelled(Exception):
    """The progress callback asked to stop."""


@dataclass
class ArterialInput:
    """Plasma concentration (mM) on a fine time grid (s), and the bolus arrival (s)."""

    t: np.ndarray
    cp: np.ndarray
    bolus_arrival_s: float


def _cumulative(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trapezoidal running integral along the last axis, starting at 0."""
    steps = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t)
    out = np.zeros(y.shape, dtype=np.float64)
    np.cumsum(steps, axis=-1, out=out[..., 1:])
    return out


def _iauc_weights(t: np.ndarray, start: float, seconds: float = 60.0) -> np.ndarray:
    """Weights w with C·w = ∫ C from ``start`` to ``start + seconds`` (linear interpolation, trapezoids)."""
    grid = np.linspace(start, min(start + seconds, t[-1]), 241)
    identity = np.eye(len(t))
    sampled = np.stack([np.interp(grid, t, identity[i]) for i in range(len(t))])
    return np.trapezoid(sampled, grid, axis=1)


def fit_maps(
    concentration: np.ndarray,
    t: np.ndarray,
    aif: ArterialInput,
    model: str,
    *,
    progress: Callable[[float], bool] | None = None,
) -> dict[str, np.ndarray]:
    """Maps (one value per row of ``concentration``, shape (voxels, phases), mM) at phase times ``t`` (s).

    Rates are per minute. ``progress`` is called with the share done after
    each block; returning False cancels (``Cancelled`` is raised).
    """
    if model not in MAP_MODELS:
        raise ValueError(f"voxel-wise maps are made with {', '.join(MAP_MODELS)}")
    fine_integral = _cumulative(aif.t, aif.cp)
    icp = np.interp(t, aif.t, fine_integral)
    cp = np.interp(t, aif.t, aif.cp)
    weights = _iauc_weights(t, aif.bolus_arrival_s)
    voxels = concentration.shape[0]
    out = {name: np.zeros(voxels, dtype=np.float32) for name in ("ktrans", "ve", "kep", "vp", "iauc60")}
    for start in range(0, voxels, BLOCK):
        block = concentration[start : start + BLOCK].astype(np.float64)
        result = _fit_block(block, t, icp, cp, model)
        result["iauc60"] = block @ weights
        for name, values in result.items():
            out[name][start : start + len(block)] = values
        if progress is not None and not progress(min(start + BLOCK, voxels) / voxels):
            raise Cancelled
    return out


def _fit_block(c: np.ndarray, t: np.ndarray, icp: np.ndarray, cp: np.ndarray, model: str) -> dict[str, np.ndarray]:
    if model == "patlak":
        design = np.stack([icp, cp], axis=1)
        solution = np.linalg.lstsq(design, c.T, rcond=None)[0]
        ktrans, vp = np.clip(solution[0], 0, None), np.clip(solution[1], 0, 1)
        zeros = np.zeros(len(c))
        return {"ktrans": ktrans * 60.0, "vp": vp, "ve": zeros, "kep": zeros}
    ic = _cumulative(t, c)
    columns = [np.broadcast_to(icp, c.shape), -ic]
    if model == "extended_tofts":
        columns.append(np.broadcast_to(cp, c.shape))
    a = np.stack(columns, axis=-1)  # (voxels, phases, parameters)
    normal = np.einsum("vtp,vtq->vpq", a, a)
    rhs = np.einsum("vtp,vt->vp", a, c)
    # A voxel without enhancement has a singular system: a tiny ridge keeps it solvable (and its maps 0).
    ridge = 1e-9 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(normal.shape[1]) + 1e-30
    solution = np.linalg.solve(normal + ridge, rhs[..., None])[..., 0]
    kep = np.clip(solution[:, 1], 0.0, None)
    vp = np.clip(solution[:, 2], 0.0, 1.0) if model == "extended_tofts" else np.zeros(len(c))
    ktrans = np.clip(solution[:, 0] - kep * vp, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = np.where(kep > 0, ktrans / kep, 0.0)
    return {"ktrans": ktrans * 60.0, "ve": np.clip(ve, 0.0, 1.0), "kep": kep * 60.0, "vp": vp}
