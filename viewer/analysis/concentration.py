"""Signal to concentration for spoiled gradient echo, and T1 maps from variable flip angles.

Steady-state SPGR (PS: Haacke et al., *Magnetic Resonance Imaging*, ch. 18):
S = M0 · sin α · (1 − E1) / (1 − cos α · E1), E1 = exp(−TR · R1), and the
agent shortens T1 linearly: R1(t) = R10 + r1 · C(t). With the pre-contrast
signal and T1 known, M0 follows and each later signal gives R1 and so C.
"""

from __future__ import annotations

import numpy as np

from .aif import dcmri

# r1 of a gadolinium agent in plasma at 1.5 T (/mM/s) when neither the agent nor the field is known.
FALLBACK_RELAXIVITY = 4.5
# Assumed pre-contrast tissue T1 (ms) at 1.5–3 T where no VFA series and no institution setting says otherwise.
DEFAULT_T1_MS = {
    "BREAST": 1400.0,
    "PROSTATE": 1600.0,
    "BRAIN": 1100.0,
    "HEAD": 1100.0,
    "LIVER": 800.0,
    "KIDNEY": 1200.0,
    "PELVIS": 1300.0,
    "": 1000.0,
}
BLOOD_T1_MS = 1440.0

_AGENTS = {
    "gadobutrol": ("gadavist", "gadovist"),
    "gadoterate": ("dotarem", "clariscan", "gd-dota"),
    "gadopentetate": ("magnevist", "gd-dtpa"),
    "gadobenade": ("multihance", "gadobenate"),
    "gadoteridol": ("prohance",),
    "gadodiamide": ("omniscan",),
    "gadoxetate": ("eovist", "primovist"),
}


def relaxivity_per_mM_s(agent: str, field_strength_t: float | None) -> float:
    """r1 in plasma (/mM/s) of the agent named in Contrast/Bolus Agent, at the nearest tabulated field."""
    text = (agent or "").lower()
    name = next(
        (generic for generic, brands in _AGENTS.items() if generic in text or any(b in text for b in brands)), None
    )
    if name is None:
        return FALLBACK_RELAXIVITY
    field = min((0.47, 1.5, 3.0, 4.7), key=lambda f: abs(f - (field_strength_t or 1.5)))
    try:
        return float(dcmri().relaxivity(field, "plasma", name)) / 1000.0
    except (KeyError, ValueError):
        return FALLBACK_RELAXIVITY


def assumed_t1_ms(body_part: str, overrides: dict[str, float] | None = None) -> float:
    part = (body_part or "").upper()
    if overrides and part in overrides:
        return overrides[part]
    if overrides and "" in overrides:
        return overrides[""]
    return DEFAULT_T1_MS.get(part, DEFAULT_T1_MS[""])


def spgr_concentration(
    signal: np.ndarray,
    *,
    baseline: int,
    t10_s: np.ndarray | float,
    tr_s: float,
    flip_deg: float,
    relaxivity: float,
) -> np.ndarray:
    """Concentration (mM) from SPGR signal, last axis time; the first ``baseline`` samples are pre-contrast.

    Voxels whose signal cannot come from the equation (beyond full recovery)
    are given 0 rather than infinities.
    """
    alpha = np.deg2rad(flip_deg)
    sin_a, cos_a = np.sin(alpha), np.cos(alpha)
    t10 = np.asarray(t10_s, dtype=np.float64)
    r10 = 1.0 / t10
    e10 = np.exp(-tr_s * r10)
    s0 = np.mean(signal[..., :baseline], axis=-1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = s0 * (1.0 - cos_a * e10) / (sin_a * (1.0 - e10))
        y = signal / (m0 * sin_a)[..., None]
        e1 = (1.0 - y) / (1.0 - y * cos_a)
        r1 = -np.log(e1) / tr_s
        c = (r1 - np.asarray(r10)[..., None]) / relaxivity
    # y ≥ 1 is more signal than full relaxation can give (noise, inflow, a wrong T1): no concentration.
    valid = np.isfinite(c) & (y < 1.0) & (e1 > 0.0)
    return np.where(valid, c, 0.0).astype(np.float32)


def vfa_t1_s(signals: np.ndarray, flips_deg: np.ndarray, tr_s: float) -> np.ndarray:
    """T1 (s) per voxel from signals at several flip angles (last axis), by the linear DESPOT1 fit.

    S/sin α = E1 · S/tan α + M0 (1 − E1): the slope over the flip angles is E1.
    """
    alpha = np.deg2rad(np.asarray(flips_deg, dtype=float))
    y = signals / np.sin(alpha)
    x = signals / np.tan(alpha)
    xm, ym = x.mean(axis=-1, keepdims=True), y.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.sum((x - xm) * (y - ym), axis=-1) / np.sum((x - xm) ** 2, axis=-1)
        t1 = -tr_s / np.log(slope)
    return np.where(np.isfinite(t1) & (t1 > 0), t1, np.nan)
