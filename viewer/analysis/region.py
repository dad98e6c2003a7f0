"""One region drawn on a dynamic series: its time–intensity curve, enhancement descriptors and Tofts fit."""

from __future__ import annotations

from typing import Any

import numpy as np

from archive.models import Series

from . import concentration, enhancement, fitting, series
from .tasks import JobError, arterial_input, baseline_count, region_mask, tissue_t1_s


def analyse_region(institution_id: Any, series_rows: list[Series], region: dict, aif_spec: dict, options: dict) -> dict:
    """Curves (signal, concentration, AIF) at the phase times, the descriptors and the Tofts fit of the region."""
    volume = series.load(series_rows)
    mask = region_mask(volume.shape[1:], [region])
    if not mask.any():
        raise JobError("the region holds no pixel")
    t = volume.times_s
    signal = volume.data[:, mask].mean(axis=1).astype(float)
    acquisition = volume.acquisition
    baseline = int(options.get("baseline_points") or baseline_count(signal))
    answer: dict[str, Any] = {
        "times_s": [round(float(v), 3) for v in t],
        "signal": [round(float(v), 3) for v in signal],
        "pixels": int(mask.sum()),
        "baseline_points": baseline,
    }
    conc = None
    if acquisition.repetition_time_ms and acquisition.flip_angle_deg:
        relaxivity = float(
            options.get("relaxivity")
            or concentration.relaxivity_per_mM_s(acquisition.agent, acquisition.field_strength_t)
        )
        tr_s, flip = acquisition.repetition_time_ms / 1000.0, acquisition.flip_angle_deg
        t10_s, t1_source = tissue_t1_s(institution_id, options, volume, series_rows, mask)
        conc = concentration.spgr_concentration(
            volume.data[:, mask].T, baseline=baseline, t10_s=t10_s, tr_s=tr_s, flip_deg=flip, relaxivity=relaxivity
        ).mean(axis=0)
        aif = arterial_input(aif_spec, options, volume, baseline, relaxivity, tr_s, flip)
        answer["concentration_mM"] = [round(float(v), 5) for v in conc]
        answer["aif_mM"] = [round(float(v), 5) for v in np.interp(t, aif.t, aif.cp)]
        answer["t1_ms"] = round(float(np.median(t10_s)) * 1000.0, 1)
        answer["t1_source"], answer["relaxivity_per_mM_s"] = t1_source, relaxivity
        if np.any(conc):
            try:
                fit = fitting.fit_curve(t, conc.astype(float), fitting.Aif(aif.t, aif.cp), "tofts")
                answer["fit"] = {k: v for k, v in fit.as_json().items() if k != "fitted_ct"}
            except fitting.FitError as exc:
                answer["fit_error"] = str(exc)
    answer["enhancement"] = enhancement.analyse(t, signal, baseline=baseline, concentration=conc).as_json()
    return answer
