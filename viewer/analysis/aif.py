"""Arterial input functions: Parker's population AIF, and one drawn on an artery."""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

DEFAULT_HEMATOCRIT = 0.45


def dcmri() -> ModuleType:
    """The dcmri library, imported on first use: it loads SciPy and matplotlib, seconds on a busy machine,
    which no page that does not analyse should wait for."""
    return importlib.import_module("dcmri")


def parker_plasma_mM(t: np.ndarray, *, bolus_arrival_s: float, hematocrit: float = DEFAULT_HEMATOCRIT) -> np.ndarray:
    """Parker et al. 2006 (MRM 56:993) at times ``t`` (s), as arterial *plasma* concentration in mM.

    Parker's curve is whole blood; plasma carries all of the agent, so it is
    more concentrated by 1 / (1 − Hct).
    """
    blood_molar = dcmri().aif_parker(np.asarray(t, dtype=float), BAT=float(bolus_arrival_s))
    return np.asarray(blood_molar, dtype=float) * 1000.0 / (1.0 - hematocrit)
