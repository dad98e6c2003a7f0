"""DCE-MRI voxel-wise maps: a 256×256 slice with 60 time points, signal to Ktrans/ve/kep/iAUC60 maps.

What the map job does per slice, timed without the archive around it: SPGR
signal → concentration, then the vectorised Tofts and extended Tofts fits
(``viewer/analysis/maps.py``). The signal is synthetic, from known Ktrans and
ve (dcmri's forward model, Parker's AIF, the SPGR equation, Gaussian noise),
so accuracy is measured beside speed. Target: ≥ 10,000 voxels/s on two cores
(the slice in < 7 s). Writes ``bench/results/dce.json``.

    python bench/dce_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")

import dcmri  # noqa: E402
from results import Figures, Run  # noqa: E402

from viewer.analysis import concentration, maps  # noqa: E402
from viewer.analysis.aif import parker_plasma_mM  # noqa: E402

SIZE, PHASES, DT = 256, 60, 5.0
TR_S, FLIP, T1_S, R1, BAT = 0.005, 15.0, 1.4, 4.5, 30.0
LEVELS = 16


def synthetic_slice(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, maps.ArterialInput]:
    """Signal (voxels, phases) of a slice whose voxels take one of 16×16 (Ktrans, ve) pairs, with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(PHASES) * DT
    fine = np.arange(0.0, t[-1] + 0.25, 0.25)
    cp = parker_plasma_mM(fine, bolus_arrival_s=BAT)
    ktrans_levels = np.linspace(0.02, 0.5, LEVELS)
    ve_levels = np.linspace(0.1, 0.6, LEVELS)
    curves = np.empty((LEVELS, LEVELS, PHASES))
    for i, k in enumerate(ktrans_levels):
        for j, v in enumerate(ve_levels):
            c = dcmri.conc_tissue(cp, t=fine, kinetics="WV", H=0.0, vi=v, Ktrans=k / 60.0)
            curves[i, j] = np.interp(t, fine, c)
    ki = rng.integers(0, LEVELS, SIZE * SIZE)
    vi = rng.integers(0, LEVELS, SIZE * SIZE)
    c = curves[ki, vi]
    r1 = 1.0 / T1_S + R1 * c
    e1 = np.exp(-TR_S * r1)
    a = np.deg2rad(FLIP)
    signal = 1000.0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
    signal += rng.normal(0.0, 0.5, signal.shape)  # SNR ≈ 100 at baseline
    return signal.astype(np.float32), t, ktrans_levels[ki], ve_levels[vi], maps.ArterialInput(fine, cp, BAT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run = Run()
    signal, t, true_ktrans, true_ve, aif = synthetic_slice()
    voxels = signal.shape[0]
    runs: dict[str, list[float]] = {"tofts": [], "extended_tofts": []}
    errors: dict[str, dict[str, float]] = {}
    with Figures() as figures:
        print(f"voxels={voxels}")
        print(f"phases={PHASES}")
        for model in runs:
            for _ in range(args.runs):
                start = time.perf_counter()
                conc = concentration.spgr_concentration(
                    signal, baseline=6, t10_s=T1_S, tr_s=TR_S, flip_deg=FLIP, relaxivity=R1
                )
                fitted = maps.fit_maps(conc, t, aif, model)
                runs[model].append(time.perf_counter() - start)
            ktrans_error = np.abs(fitted["ktrans"] - true_ktrans)
            within = np.mean((ktrans_error <= 0.005 + 0.1 * true_ktrans) & (np.abs(fitted["ve"] - true_ve) <= 0.05))
            errors[model] = {"ktrans_median_abs_error": float(np.median(ktrans_error)), "within_osipi": float(within)}
            seconds = statistics.median(runs[model])
            print(f"{model}.slice_seconds_p50={seconds:.3f}")
            print(f"{model}.voxels_per_second={voxels / seconds:.0f}")
            print(f"{model}.ktrans_median_abs_error={errors[model]['ktrans_median_abs_error']:.5f}")
            print(f"{model}.share_within_osipi_tolerance={within:.4f}")
    run.write("dce", {"figures": figures.values, "runs": runs, "accuracy": errors, "target_voxels_per_second": 10000})


if __name__ == "__main__":
    main()
