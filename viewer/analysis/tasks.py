"""The DCE map job: dynamic series → concentration → voxel-wise maps → Parametric Maps in the study.

The task takes the job's id only, claims it (a message delivered twice runs
once), reports progress after each block of voxels and stops when the job was
cancelled meanwhile.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from celery import shared_task
from PIL import Image, ImageDraw

from archive.models import Series
from viewer.render import load_dataset

from . import actions, concentration, maps, parametric, series
from .aif import DEFAULT_HEMATOCRIT, parker_plasma_mM
from .models import AssumedTissueT1, DceMapJob

log = logging.getLogger(__name__)

# Parametric Map series numbers: after the scanner's own.
SERIES_NUMBER_BASE = 900
MAPS_OF_MODEL = {
    "tofts": ("ktrans", "ve", "kep", "iauc60"),
    "extended_tofts": ("ktrans", "ve", "kep", "vp", "iauc60"),
    "patlak": ("ktrans", "vp", "iauc60"),
}


class JobError(ValueError):
    """The job cannot be computed; the message is shown to the user."""


def region_mask(shape: tuple[int, int, int], regions: list[dict]) -> np.ndarray:
    """A boolean (slices, rows, columns) mask from polygons in pixel coordinates (x = column, y = row).

    A region without a polygon covers its whole slice.
    """
    mask = np.zeros(shape, dtype=bool)
    for region in regions:
        index = int(region["slice"])
        if not 0 <= index < shape[0]:
            raise JobError(f"slice {index} is outside the series (0–{shape[0] - 1})")
        polygon = region.get("polygon")
        if not polygon:
            mask[index] = True
            continue
        image = Image.new("1", (shape[2], shape[1]), 0)
        ImageDraw.Draw(image).polygon([(float(x), float(y)) for x, y in polygon], fill=1, outline=1)
        mask[index] |= np.asarray(image, dtype=bool)
    return mask


def baseline_count(curve: np.ndarray) -> int:
    """Pre-contrast phases of a mean curve: those before it first rises by a tenth of its enhancement."""
    rise = curve - curve[0]
    peak = float(rise.max())
    if peak <= 0:
        return 1
    return max(int(np.nonzero(rise > 0.1 * peak)[0][0]), 1)


def tissue_t1_ms(institution_id: Any, options: dict, body_part: str) -> float:
    """The pre-contrast tissue T1: as given, else the institution's for the body region, else the default."""
    if options.get("t1_ms"):
        return float(options["t1_ms"])
    overrides = dict(AssumedTissueT1.objects.filter(institution=institution_id).values_list("body_part", "t1_ms"))
    return concentration.assumed_t1_ms(body_part, {k.upper(): v for k, v in overrides.items()})


def tissue_t1_s(
    institution_id: Any, options: dict, volume: series.DynamicVolume, series_rows: list[Series], mask: np.ndarray
) -> tuple[np.ndarray | float, str]:
    """Pre-contrast T1 (s) of the masked voxels and where it comes from: given, a VFA series of the study, or assumed.

    A voxel the VFA fit cannot explain keeps the assumed T1.
    """
    assumed = tissue_t1_ms(institution_id, options, volume.acquisition.body_part) / 1000.0
    if options.get("t1_ms"):
        return assumed, "given"
    study_id = series_rows[0].study_id
    others = list(Series.objects.filter(study_id=study_id).exclude(pk__in=[s.pk for s in series_rows]))
    found = series.variable_flip_angles(others, volume.shape[1:])
    if found is None:
        return assumed, "assumed"
    signals, flips, tr_s = found
    t1 = concentration.vfa_t1_s(signals[mask], flips, tr_s)
    return np.where(np.isfinite(t1), t1, assumed), "vfa"


def arterial_input(
    spec: dict, options: dict, volume: series.DynamicVolume, baseline: int, relaxivity: float, tr_s: float, flip: float
) -> maps.ArterialInput:
    """Parker's population AIF scaled to the acquisition's timing, or the curve of a region drawn on an artery."""
    t = volume.times_s
    hematocrit = float(options.get("hematocrit", DEFAULT_HEMATOCRIT))
    fine = np.arange(0.0, t[-1] + 0.25, 0.25)
    region = spec.get("region")
    if region:
        mask = region_mask(volume.shape[1:], [region])
        if not mask.any():
            raise JobError("the arterial region holds no pixel")
        curve = volume.data[:, mask].mean(axis=1)
        # The bolus reaches the artery before the tissue: its own curve says where its baseline ends.
        arterial_baseline = int(options.get("baseline_points") or min(baseline, baseline_count(curve)))
        blood = concentration.spgr_concentration(
            curve[None, :],
            baseline=arterial_baseline,
            t10_s=concentration.BLOOD_T1_MS / 1000.0,
            tr_s=tr_s,
            flip_deg=flip,
            relaxivity=relaxivity,
        )[0]
        plasma = blood / (1.0 - hematocrit)
        arrival = float(t[max(arterial_baseline - 1, 0)])
        return maps.ArterialInput(fine, np.interp(fine, t, plasma), arrival)
    # The bolus reaches the tissue around the last pre-contrast phase; Parker's curve starts there.
    arrival = float(spec.get("bolus_arrival_s", t[max(baseline - 1, 0)]))
    return maps.ArterialInput(fine, parker_plasma_mM(fine, bolus_arrival_s=arrival, hematocrit=hematocrit), arrival)


@shared_task(ignore_result=True)
def compute_dce_maps(job_id: str) -> None:
    job = actions.do_begin_dce_map_job(job_id)
    if job is None:
        return
    try:
        results = _compute(job)
    except maps.Cancelled:
        actions.do_end_dce_map_job(job.pk, DceMapJob.State.CANCELLED)
    except (JobError, series.NotDynamic) as exc:
        actions.do_end_dce_map_job(job.pk, DceMapJob.State.FAILED, error=str(exc))
    except Exception as exc:
        log.exception("DCE map job %s failed", job.pk)
        actions.do_end_dce_map_job(job.pk, DceMapJob.State.FAILED, error=f"internal error: {type(exc).__name__}")
    else:
        actions.do_end_dce_map_job(job.pk, DceMapJob.State.DONE, results=results)


def _compute(job: DceMapJob) -> dict[str, Any]:
    series_rows = list(Series.objects.filter(pk__in=job.series, study=job.study))
    volume = series.load(series_rows)
    acquisition = volume.acquisition
    if not acquisition.repetition_time_ms or not acquisition.flip_angle_deg:
        raise JobError("the series lacks Repetition Time or Flip Angle: signal cannot become concentration")
    mask = region_mask(volume.shape[1:], job.mask.get("regions", []))
    if not mask.any():
        raise JobError("the mask holds no pixel")
    signal = volume.data[:, mask].T  # (voxels, phases)
    baseline = int(job.options.get("baseline_points") or baseline_count(signal.mean(axis=0)))
    relaxivity = float(
        job.options.get("relaxivity")
        or concentration.relaxivity_per_mM_s(acquisition.agent, acquisition.field_strength_t)
    )
    tr_s, flip = acquisition.repetition_time_ms / 1000.0, acquisition.flip_angle_deg
    t10_s, t1_source = tissue_t1_s(job.institution_id, job.options, volume, series_rows, mask)
    conc = concentration.spgr_concentration(
        signal, baseline=baseline, t10_s=t10_s, tr_s=tr_s, flip_deg=flip, relaxivity=relaxivity
    )
    aif = arterial_input(job.aif, job.options, volume, baseline, relaxivity, tr_s, flip)
    fitted = maps.fit_maps(
        conc, volume.times_s, aif, job.model, progress=lambda share: actions.do_report_dce_map_progress(job.pk, share)
    )
    sources = [load_dataset(frame.instance) for frame in volume.frames[0]]
    stored: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        for number, name in enumerate(MAPS_OF_MODEL[job.model], start=1):
            full = np.zeros(mask.shape, dtype=np.float32)
            full[mask] = fitted[name]
            label, unit = maps.MAP_UNITS[name]
            ds = parametric.parametric_map(
                name, label, unit, full, sources, series_number=SERIES_NUMBER_BASE + number, model=job.model
            )
            instance = actions.do_archive_parametric_map(job, parametric.write(ds, Path(folder) / f"{name}.dcm"))
            inside = fitted[name]
            stored[name] = {
                "label": label,
                "unit": unit,
                "series": str(instance.series_id),
                "instance": str(instance.pk),
                "sop_instance_uid": instance.sop_instance_uid,
                "mean": float(np.mean(inside)),
                "median": float(np.median(inside)),
                "min": float(np.min(inside)),
                "max": float(np.max(inside)),
            }
    return {
        "maps": stored,
        "voxels": int(mask.sum()),
        "phases": len(volume.times_s),
        "times_s": [round(float(v), 3) for v in volume.times_s],
        "t1_ms": round(float(np.median(t10_s)) * 1000.0, 1),
        "t1_source": t1_source,
        "relaxivity_per_mM_s": relaxivity,
        "baseline_points": baseline,
        "bolus_arrival_s": aif.bolus_arrival_s,
    }
