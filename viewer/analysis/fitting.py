"""Pharmacokinetic fits of one tissue curve: Tofts, extended Tofts, Patlak, two-compartment exchange.

The forward models are dcmri's (``conc_tissue`` kinetics ``WV``, ``HF``,
``HFU`` and ``2CX``, see ``README.md`` here); SciPy's bounded least squares
fits them. dcmri speaks blood concentration and haematocrit; the input here
is arterial *plasma* concentration, so every model is called with ``H=0``
(blood = plasma, ``vb`` = ``vp``, ``Fb`` = ``Fp``). Inside the fit rates are
per second, the unit of the forward models; answers are per minute.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .aif import dcmri, parker_plasma_mM

MODELS = ("tofts", "extended_tofts", "patlak", "2cxm")

# Units of every parameter the API answers (OSIPI lexicon names where there is one).
UNITS = {
    "ktrans_per_min": "1/min",
    "ve": "mL/mL",
    "vp": "mL/mL",
    "kep_per_min": "1/min",
    "fp_ml_per_100ml_per_min": "mL/100 mL/min",
    "ps_per_min": "1/min",
    "delay_s": "s",
}

# Arterial delays tried before the refinement: the least-squares cost is not
# smooth in the delay (interpolation of a sampled AIF), so start near the best.
DELAY_GRID_S = np.arange(0.0, 20.5, 1.0)
MAX_DELAY_S = 30.0


@dataclass(frozen=True)
class _Model:
    names: tuple[str, ...]  # free parameters, per-second rates
    start: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    curve: Callable[..., np.ndarray]


def _tofts(ca: np.ndarray, t: np.ndarray, ktrans: float, ve: float) -> np.ndarray:
    return dcmri().conc_tissue(ca, t=t, kinetics="WV", H=0.0, vi=ve, Ktrans=ktrans)


def _extended_tofts(ca: np.ndarray, t: np.ndarray, ktrans: float, ve: float, vp: float) -> np.ndarray:
    return dcmri().conc_tissue(ca, t=t, kinetics="HF", H=0.0, vi=ve, vb=vp, PS=ktrans)


def _patlak(ca: np.ndarray, t: np.ndarray, ktrans: float, vp: float) -> np.ndarray:
    return dcmri().conc_tissue(ca, t=t, kinetics="HFU", H=0.0, vb=vp, PS=ktrans)


def _two_compartment_exchange(ca: np.ndarray, t: np.ndarray, fp: float, ps: float, ve: float, vp: float) -> np.ndarray:
    return dcmri().conc_tissue(ca, t=t, kinetics="2CX", H=0.0, vi=ve, vb=vp, Fb=fp, PS=ps)


_MODELS = {
    "tofts": _Model(("ktrans", "ve"), (0.002, 0.3), (0.0, 1e-4), (0.1, 1.0), _tofts),
    "extended_tofts": _Model(
        ("ktrans", "ve", "vp"), (0.002, 0.3, 0.02), (0.0, 1e-4, 0.0), (0.1, 1.0, 1.0), _extended_tofts
    ),
    "patlak": _Model(("ktrans", "vp"), (0.002, 0.02), (0.0, 0.0), (0.1, 1.0), _patlak),
    "2cxm": _Model(
        ("fp", "ps", "ve", "vp"),
        (0.01, 0.002, 0.3, 0.02),
        (1e-5, 0.0, 1e-4, 1e-4),
        (0.5, 0.1, 1.0, 1.0),
        _two_compartment_exchange,
    ),
}


def free_parameters(model: str) -> int:
    return len(_MODELS[model].names)


@dataclass
class Aif:
    """Arterial plasma concentration (mM) at its own times (s)."""

    t: np.ndarray
    ca: np.ndarray

    def delayed(self, delay_s: float) -> np.ndarray:
        """The input as it reaches the tissue ``delay_s`` later (zero before it starts)."""
        if delay_s == 0.0:
            return self.ca
        return np.interp(self.t - delay_s, self.t, self.ca, left=0.0)


def population_aif(t: np.ndarray, bolus_arrival_s: float, hematocrit: float) -> Aif:
    """Parker's population input on a fine grid covering ``t`` (sampled at most every 0.5 s)."""
    step = min(0.5, float(np.min(np.diff(t)))) if len(t) > 1 else 0.5
    grid = np.arange(0.0, float(t[-1]) + step, step)
    return Aif(grid, parker_plasma_mM(grid, bolus_arrival_s=bolus_arrival_s, hematocrit=hematocrit))


@dataclass
class Fit:
    model: str
    parameters: dict[str, float | None]
    uncertainties: dict[str, float | None]
    rmse_mM: float
    r_squared: float
    fitted: np.ndarray = field(repr=False)

    def as_json(self) -> dict:
        answer: dict = {"model": self.model}
        answer.update({name: _round(value) for name, value in self.parameters.items()})
        answer["uncertainties"] = {
            name: _round(value) for name, value in self.uncertainties.items() if value is not None
        }
        answer["units"] = {name: UNITS[name] for name, value in self.parameters.items() if value is not None}
        answer["residual"] = {"rmse_mM": _round(self.rmse_mM), "r_squared": _round(self.r_squared)}
        answer["fitted_ct"] = [_round(v) for v in self.fitted.tolist()]
        return answer


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


class FitError(ValueError):
    """The data cannot be fitted (the message says why, for the caller)."""


def least_squares(*args: Any, **kwargs: Any) -> Any:
    # SciPy loads in seconds on a busy machine: only when a fit is asked for, not with the URLconf.
    from scipy.optimize import least_squares as solve

    return solve(*args, **kwargs)


def fit_curve(t: np.ndarray, ct: np.ndarray, aif: Aif, model: str, *, fit_delay: bool = False) -> Fit:
    """Fit ``model`` to the tissue curve ``ct`` (mM) sampled at ``t`` (s), driven by ``aif``.

    The model is computed on the AIF's time grid and sampled at ``t``. With
    ``fit_delay`` the arterial delay (0–30 s) is a free parameter too.
    """
    spec = _MODELS[model]
    n = len(spec.names)

    def predict(params: np.ndarray, delay: float) -> np.ndarray:
        curve = spec.curve(aif.delayed(delay), aif.t, *params)
        return np.interp(t, aif.t, curve)

    def fit_at(delay: float, start: np.ndarray) -> tuple[np.ndarray, float]:
        result = least_squares(
            lambda p: predict(p, delay) - ct, start, bounds=(spec.lower, spec.upper), x_scale="jac", method="trf"
        )
        return result.x, float(np.sum(result.fun**2))

    start = np.array(spec.start)
    delay = 0.0
    with warnings.catch_warnings():
        # Overflow in the exponentials of extreme trial parameters is expected and rejected by the optimiser.
        warnings.simplefilter("ignore", RuntimeWarning)
        if fit_delay:
            # The delay is searched with a fast model (Tofts, or Patlak itself),
            # then refined together with the chosen model's parameters.
            search = model if model in ("tofts", "patlak") else "tofts"
            probe = _MODELS[search]
            trials = [(_fit_fixed_delay(probe, aif, t, ct, d), d) for d in DELAY_GRID_S]
            _, delay = min(trials, key=lambda trial: trial[0])
            params, _ = fit_at(delay, start)
            result = least_squares(
                lambda p: predict(p[:n], p[n]) - ct,
                np.append(params, delay),
                bounds=((*spec.lower, 0.0), (*spec.upper, MAX_DELAY_S)),
                x_scale="jac",
                method="trf",
            )
            params, delay = result.x[:n], float(result.x[n])
            jacobian, residuals = result.jac, result.fun
        else:
            result = least_squares(
                lambda p: predict(p, 0.0) - ct, start, bounds=(spec.lower, spec.upper), x_scale="jac", method="trf"
            )
            params, jacobian, residuals = result.x, result.jac, result.fun
    if not np.all(np.isfinite(params)):
        raise FitError("the fit did not converge")
    stderr = _standard_errors(jacobian, residuals)
    fitted = predict(params, delay)
    ss_res = float(np.sum((ct - fitted) ** 2))
    ss_tot = float(np.sum((ct - ct.mean()) ** 2))
    values = dict(zip(spec.names, (float(p) for p in params), strict=True))
    errors = dict(zip(spec.names, (float(e) for e in stderr[:n]), strict=True))
    parameters, uncertainties = _in_units(model, values, errors)
    parameters["delay_s"] = delay if fit_delay else 0.0
    uncertainties["delay_s"] = float(stderr[n]) if fit_delay and len(stderr) > n else None
    return Fit(
        model=model,
        parameters=parameters,
        uncertainties=uncertainties,
        rmse_mM=math.sqrt(ss_res / len(ct)),
        r_squared=1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        fitted=fitted,
    )


def _fit_fixed_delay(spec: _Model, aif: Aif, t: np.ndarray, ct: np.ndarray, delay: float) -> float:
    """The least-squares cost of ``spec`` with the arterial delay held at ``delay``."""
    ca = aif.delayed(delay)
    result = least_squares(
        lambda p: np.interp(t, aif.t, spec.curve(ca, aif.t, *p)) - ct,
        np.array(spec.start),
        bounds=(spec.lower, spec.upper),
        x_scale="jac",
        method="trf",
    )
    return float(np.sum(result.fun**2))


def _standard_errors(jacobian: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Standard errors from the Jacobian at the optimum (infinite where a parameter is not determined)."""
    dof = max(len(residuals) - jacobian.shape[1], 1)
    variance = float(np.sum(residuals**2)) / dof
    try:
        covariance = np.linalg.pinv(jacobian.T @ jacobian) * variance
    except np.linalg.LinAlgError:
        return np.full(jacobian.shape[1], np.inf)
    return np.sqrt(np.clip(np.diag(covariance), 0.0, None))


def _in_units(
    model: str, values: dict[str, float], errors: dict[str, float]
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Per-second fit parameters as the API's named parameters (per minute, mL/100 mL/min)."""
    p: dict[str, float | None] = dict.fromkeys(UNITS)
    e: dict[str, float | None] = dict.fromkeys(UNITS)
    if model == "2cxm":
        fp, ps = values["fp"], values["ps"]
        p["fp_ml_per_100ml_per_min"], e["fp_ml_per_100ml_per_min"] = fp * 6000.0, errors["fp"] * 6000.0
        p["ps_per_min"], e["ps_per_min"] = ps * 60.0, errors["ps"] * 60.0
        # Ktrans = E·Fp with the extraction fraction E = PS / (PS + Fp).
        ktrans = fp * ps / (fp + ps) if fp + ps > 0 else 0.0
        p["ktrans_per_min"] = ktrans * 60.0
    else:
        ktrans = values["ktrans"]
        p["ktrans_per_min"], e["ktrans_per_min"] = ktrans * 60.0, errors["ktrans"] * 60.0
    for name in ("ve", "vp"):
        if name in values:
            p[name], e[name] = values[name], errors[name]
    ve = values.get("ve")
    if ve:
        kep = ktrans * 60.0 / ve
        p["kep_per_min"] = kep
        ktrans_error = e["ktrans_per_min"]
        if ktrans_error is not None:
            # First-order propagation for kep = Ktrans / ve (covariance neglected).
            e["kep_per_min"] = kep * math.hypot(ktrans_error / max(ktrans * 60.0, 1e-12), errors["ve"] / ve)
    return p, e
