"""Semi-quantitative analysis of a time–intensity curve.

Descriptors of the enhancement of a region after the contrast injection, as
radiologists read them off the curve (Kuhl et al., Radiology 1999;211:101 for
the curve types; Hylton's signal enhancement ratio, Radiology 2012;263:663):
onset, initial slope, maximum enhancement ratio, time to peak, wash-out rate,
SER, iAUC60 and the curve type I (persistent), II (plateau), III (wash-out).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Curve type: the late change relative to the early post-contrast signal (Kuhl).
PLATEAU_BAND = 0.10
# The "early" point: the early phase ends this long after the onset (Kuhl's
# first two minutes; SER's early image is ~90 s after the injection).
EARLY_PHASE_S = 120.0
SER_EARLY_S = 90.0
# Onset: the first sample whose enhancement exceeds this share of the peak's,
# and three standard deviations of the baseline.
ONSET_FRACTION = 0.10


class CurveTypes:
    PERSISTENT = "I"
    PLATEAU = "II"
    WASHOUT = "III"

    LABELS = {"I": "persistent", "II": "plateau", "III": "wash-out"}


@dataclass
class Enhancement:
    baseline: float
    onset_s: float | None
    initial_slope_percent_per_min: float | None
    max_enhancement_ratio_percent: float
    peak_time_s: float
    time_to_peak_s: float | None
    washout_rate_percent_per_min: float | None
    signal_enhancement_ratio: float | None
    iauc60: float | None
    curve_type: str | None

    def as_json(self) -> dict:
        answer = {k: _round(v) if isinstance(v, float) else v for k, v in asdict(self).items()}
        answer["curve_type_label"] = CurveTypes.LABELS.get(self.curve_type or "", None)
        return answer


def _round(value: float) -> float | None:
    return float(f"{value:.6g}") if math.isfinite(value) else None


def baseline_points(t: np.ndarray, signal: np.ndarray) -> int:
    """How many samples precede the contrast's arrival (at least one), when the caller does not say."""
    rise = signal - signal[0]
    peak = float(np.max(rise))
    if peak <= 0:
        return len(signal)
    above = np.nonzero(rise > ONSET_FRACTION * peak)[0]
    return max(int(above[0]), 1)


def analyse(
    t: np.ndarray, signal: np.ndarray, *, baseline: int | None = None, concentration: np.ndarray | None = None
) -> Enhancement:
    """Describe the curve ``signal`` at times ``t`` (s); the first ``baseline`` samples are pre-contrast.

    iAUC60 is the area under ``concentration`` (mM·s) when given, else under
    the relative enhancement (s), over the first 60 s after the onset.
    """
    n0 = baseline if baseline is not None else baseline_points(t, signal)
    s0 = float(np.mean(signal[:n0]))
    noise = float(np.std(signal[:n0])) if n0 > 1 else 0.0
    relative = (signal - s0) / s0 if s0 > 0 else np.zeros_like(signal)
    peak_index = int(np.argmax(signal))
    peak_rise = float(signal[peak_index]) - s0
    mer = 100.0 * peak_rise / s0 if s0 > 0 else 0.0
    threshold = max(ONSET_FRACTION * peak_rise, 3.0 * noise)
    crossing = np.nonzero(signal[n0:] - s0 > threshold)[0] if peak_rise > 0 else np.array([], dtype=int)
    if crossing.size == 0:
        return Enhancement(s0, None, None, mer, float(t[peak_index]), None, None, None, None, None)
    # The onset is where the rise leaves the baseline: the last baseline sample before the crossing.
    onset_index = max(n0 + int(crossing[0]) - 1, 0)
    onset = float(t[onset_index])

    slopes = np.diff(relative[onset_index : peak_index + 1]) / np.diff(t[onset_index : peak_index + 1])
    initial_slope = 100.0 * 60.0 * float(np.max(slopes)) if slopes.size else None

    # The early post-contrast signal: the highest within the early phase (Kuhl).
    early_mask = (t >= onset) & (t <= onset + EARLY_PHASE_S)
    early_index = int(np.nonzero(early_mask)[0][np.argmax(signal[early_mask])])
    early = float(signal[early_index])
    late = float(signal[-1])
    curve_type = None
    if t[-1] - t[early_index] > 0:
        change = (late - early) / early if early > 0 else 0.0
        if change > PLATEAU_BAND:
            curve_type = CurveTypes.PERSISTENT
        elif change < -PLATEAU_BAND:
            curve_type = CurveTypes.WASHOUT
        else:
            curve_type = CurveTypes.PLATEAU

    washout = None
    if t[-1] > t[peak_index] and signal[peak_index] > 0:
        drop = (float(signal[peak_index]) - late) / float(signal[peak_index])
        washout = 100.0 * drop / ((t[-1] - t[peak_index]) / 60.0)

    ser = None
    if t[-1] >= onset + SER_EARLY_S and late - s0 != 0:
        s1 = float(np.interp(onset + SER_EARLY_S, t, signal))
        ser = (s1 - s0) / (late - s0)

    iauc = None
    if t[-1] >= onset + 60.0:
        curve = concentration if concentration is not None else relative
        grid = np.linspace(onset, onset + 60.0, 241)
        iauc = float(np.trapezoid(np.interp(grid, t, curve), grid))

    return Enhancement(
        baseline=s0,
        onset_s=onset,
        initial_slope_percent_per_min=initial_slope,
        max_enhancement_ratio_percent=mer,
        peak_time_s=float(t[peak_index]),
        time_to_peak_s=float(t[peak_index]) - onset,
        washout_rate_percent_per_min=washout,
        signal_enhancement_ratio=ser,
        iauc60=iauc,
        curve_type=curve_type,
    )
