"""Signal to concentration (SPGR), T1 from variable flip angles, relaxivity and assumed T1: pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from viewer.analysis import concentration

TR_S, R1 = 0.005, 4.5


def spgr(m0: float, t1_s: np.ndarray, flip_deg: float) -> np.ndarray:
    e1 = np.exp(-TR_S / t1_s)
    a = np.deg2rad(flip_deg)
    return m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


def test_concentration_is_recovered_from_the_spgr_signal():
    truth = np.array([0.0, 0.0, 0.0, 0.2, 0.8, 1.5, 1.1, 0.9])  # mM
    t10 = 1.2
    signal = spgr(1000.0, 1.0 / (1.0 / t10 + R1 * truth), 15.0)
    found = concentration.spgr_concentration(
        signal[None, :], baseline=3, t10_s=t10, tr_s=TR_S, flip_deg=15.0, relaxivity=R1
    )[0]
    assert found == pytest.approx(truth, abs=1e-4)


def test_a_signal_beyond_full_recovery_gives_zero_not_infinity():
    signal = np.array([[100.0, 100.0, 1e9]])
    found = concentration.spgr_concentration(signal, baseline=2, t10_s=1.0, tr_s=TR_S, flip_deg=15.0, relaxivity=R1)
    assert np.all(np.isfinite(found)) and found[0, 2] == 0.0


def test_t1_from_variable_flip_angles():
    t1 = np.array([0.8, 1.4, 2.0])
    flips = np.array([2.0, 5.0, 10.0, 15.0])
    signals = np.stack([spgr(1500.0, t1, f) for f in flips], axis=-1)
    assert concentration.vfa_t1_s(signals, flips, TR_S) == pytest.approx(t1, rel=1e-6)


def test_relaxivity_follows_the_agent_and_field():
    gadovist = concentration.relaxivity_per_mM_s("Gadovist 1.0", 1.5)
    assert 4.0 < gadovist < 6.0
    assert concentration.relaxivity_per_mM_s("Dotarem", 3.0) < gadovist
    assert concentration.relaxivity_per_mM_s("", None) == concentration.FALLBACK_RELAXIVITY


def test_the_institution_assumed_t1_overrides_the_default():
    assert concentration.assumed_t1_ms("BREAST") == concentration.DEFAULT_T1_MS["BREAST"]
    assert concentration.assumed_t1_ms("breast", {"BREAST": 1250.0}) == 1250.0
    assert concentration.assumed_t1_ms("KNEE", {"": 900.0}) == 900.0
    assert concentration.assumed_t1_ms("KNEE") == concentration.DEFAULT_T1_MS[""]
