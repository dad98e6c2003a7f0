"""Dynamic series: recognising a DCE-MRI acquisition and loading it as a 4-D volume with its phase times.

A DCE acquisition arrives either as one series holding every temporal
position, or as one series per time point. The phases are told apart by
Temporal Position Identifier (0020,0100) where the scanner sets it, else by
Trigger Time (0018,1060), else by Acquisition Time (0008,0032); their times,
in seconds from the first phase, come from Trigger Time or Acquisition Time
(PS3.3 C.7.6.2, C.8.3.1). Every phase must cover the same slice positions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from archive.models import Instance, Series
from viewer import pixels
from viewer.render import load_dataset, read_native_frame


class NotDynamic(ValueError):
    """The series is not a usable dynamic acquisition (the message says why)."""


@dataclass(frozen=True)
class Frame:
    instance: Instance
    frame: int
    phase_key: tuple
    time_s: float | None
    position: float


@dataclass
class Acquisition:
    """Sequence parameters needed to turn signal into concentration."""

    repetition_time_ms: float | None
    flip_angle_deg: float | None
    field_strength_t: float | None
    agent: str
    body_part: str


@dataclass
class DynamicVolume:
    data: np.ndarray  # (phases, slices, rows, columns), modality values, float32
    times_s: np.ndarray  # (phases,) seconds from the first phase
    frames: list[list[Frame]]  # [phase][slice]
    acquisition: Acquisition

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.data.shape  # type: ignore[return-value]


def _tm_seconds(value: str) -> float | None:
    text = str(value).strip()
    if len(text) < 2:
        return None
    try:
        hours, minutes = int(text[0:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _float(value: object) -> float | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _position(attrs: pixels.JsonAttributes) -> float:
    """Where the slice lies along its normal (mm); slices of one phase are sorted by it."""
    position = attrs.get("ImagePositionPatient")
    orientation = attrs.get("ImageOrientationPatient")
    if isinstance(position, list) and isinstance(orientation, list) and len(orientation) == 6:
        row, column = np.array(orientation[:3], float), np.array(orientation[3:], float)
        return float(np.dot(np.cross(row, column), np.array(position, float)))
    return float(attrs.get("SliceLocation", 0.0) or 0.0)


def _frames_of(instances: Iterable[Instance]) -> list[Frame]:
    frames = []
    for instance in instances:
        attrs = pixels.JsonAttributes(instance.metadata or {})
        trigger = _float(attrs.get("TriggerTime"))
        acquired = _tm_seconds(attrs.get("AcquisitionTime", "") or attrs.get("ContentTime", "") or "")
        temporal = attrs.get("TemporalPositionIdentifier")
        if temporal is not None:
            key: tuple = ("tpi", int(temporal))
        elif trigger is not None:
            key = ("trigger", trigger)
        elif acquired is not None:
            key = ("acquisition", acquired)
        else:
            key = ("none", 0)
        time_s = trigger / 1000.0 if trigger is not None else acquired
        for index in range(max(instance.number_of_frames, 1)):
            frames.append(Frame(instance, index, key, time_s, _position(attrs)))
    return frames


def _acquisition(instance: Instance) -> Acquisition:
    attrs = pixels.JsonAttributes(instance.metadata or {})
    return Acquisition(
        repetition_time_ms=_float(attrs.get("RepetitionTime")),
        flip_angle_deg=_float(attrs.get("FlipAngle")),
        field_strength_t=_float(attrs.get("MagneticFieldStrength")),
        agent=str(attrs.get("ContrastBolusAgent", "") or ""),
        body_part=str(attrs.get("BodyPartExamined", "") or instance.series.body_part or "").upper(),
    )


def phases(series_list: list[Series]) -> tuple[list[list[Frame]], np.ndarray]:
    """The frames of a dynamic acquisition grouped by phase (each sorted by slice position) and phase times.

    Raises ``NotDynamic`` when there are fewer than three phases, or phases
    disagree in slice count.
    """
    if not series_list:
        raise NotDynamic("no series given")
    if any(s.modality and s.modality != "MR" for s in series_list):
        raise NotDynamic("DCE analysis needs MR series")
    instances = list(Instance.objects.filter(series__in=series_list).select_related("series"))
    frames = _frames_of(instances)
    by_phase: dict[tuple, list[Frame]] = {}
    for frame in frames:
        # One series per time point: the series itself is a phase when its frames carry no temporal key.
        key = frame.phase_key if frame.phase_key[0] != "none" else ("series", frame.instance.series_id)
        by_phase.setdefault(key, []).append(frame)
    if len(series_list) > 1 and len(by_phase) < len(series_list):
        # Several series, each one phase, with the same temporal key: keep them apart by series.
        by_phase = {}
        for frame in frames:
            by_phase.setdefault(("series", frame.instance.series_id, frame.phase_key), []).append(frame)
    if len(by_phase) < 3:
        raise NotDynamic(f"a dynamic series needs at least 3 time points; found {len(by_phase)}")
    groups = [sorted(group, key=lambda f: f.position) for group in by_phase.values()]
    counts = {len(group) for group in groups}
    if len(counts) != 1:
        raise NotDynamic(f"the time points cover different numbers of slices ({sorted(counts)})")
    raw_times = [_phase_time(group) for group in groups]
    if any(time is None for time in raw_times):
        raise NotDynamic("a time point has neither Trigger Time nor Acquisition Time")
    order = sorted(range(len(groups)), key=lambda i: raw_times[i])  # type: ignore[arg-type, return-value]
    if all(key[0] == "tpi" for key in by_phase):
        keys = list(by_phase)
        order = sorted(range(len(groups)), key=lambda i: keys[i][1])
    groups = [groups[i] for i in order]
    times = np.array([raw_times[i] for i in order], dtype=float)
    times = np.where(times < times[0] - 43200, times + 86400, times)  # an acquisition across midnight
    times = times - times[0]
    if np.any(np.diff(times) <= 0):
        raise NotDynamic("the time points' times do not increase")
    return groups, times


def _phase_time(group: list[Frame]) -> float | None:
    times = [f.time_s for f in group if f.time_s is not None]
    return min(times) if times else None


def _decode(ref: Frame, datasets: dict) -> np.ndarray:
    frame = read_native_frame(ref.instance, ref.frame)
    if frame is None:
        ds = datasets.get(ref.instance.pk)
        if ds is None:
            ds = datasets[ref.instance.pk] = load_dataset(ref.instance)
        frame = pixels.decode_frame(ds, ref.frame)
    if frame.info.is_color:
        raise NotDynamic("DCE analysis needs grayscale images")
    return pixels.modality_values(frame.pixels, frame.info).astype(np.float32)


def load(series_list: list[Series]) -> DynamicVolume:
    """Decode every frame of the dynamic acquisition into one float32 4-D array of modality values."""
    groups, times = phases(series_list)
    first = groups[0][0]
    data: np.ndarray | None = None
    datasets: dict = {}
    for p, group in enumerate(groups):
        for s, ref in enumerate(group):
            values = _decode(ref, datasets)
            if data is None:
                data = np.empty((len(groups), len(group), *values.shape), dtype=np.float32)
            if values.shape != data.shape[2:]:
                raise NotDynamic("the frames differ in size")
            data[p, s] = values
    assert data is not None
    return DynamicVolume(data=data, times_s=times, frames=groups, acquisition=_acquisition(first.instance))


def variable_flip_angles(
    candidates: list[Series], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Signals (slices, rows, columns, flips), the flip angles and TR (s) of the first series acquired at
    several flip angles over the same slices as the dynamic series (shape (slices, rows, columns)), if any."""
    for candidate in candidates:
        if candidate.modality != "MR":
            continue
        by_flip: dict[float, list[Frame]] = {}
        tr_ms = None
        for frame in _frames_of(candidate.instances.all()):
            attrs = pixels.JsonAttributes(frame.instance.metadata or {})
            flip = _float(attrs.get("FlipAngle"))
            tr_ms = tr_ms or _float(attrs.get("RepetitionTime"))
            if flip is None:
                break
            by_flip.setdefault(flip, []).append(frame)
        if len(by_flip) < 2 or not tr_ms or any(len(g) != shape[0] for g in by_flip.values()):
            continue
        flips = sorted(by_flip)
        datasets: dict = {}
        stack = np.stack(
            [np.stack([_decode(f, datasets) for f in sorted(by_flip[a], key=lambda f: f.position)]) for a in flips],
            axis=-1,
        )
        if stack.shape[:3] != tuple(shape):
            continue
        return stack, np.array(flips), tr_ms / 1000.0
    return None


def dynamic_series_of(study_series: list[Series]) -> list[list[Series]]:
    """Groups of a study's MR series that form dynamic acquisitions (for the viewer to offer).

    A series with at least three temporal positions is one acquisition by
    itself; single-phase series of one size and description, at least three,
    form one acquisition together.
    """
    found: list[list[Series]] = []
    singles: dict[tuple, list[Series]] = {}
    for series in study_series:
        if series.modality != "MR":
            continue
        metadata = [i.metadata or {} for i in series.instances.all()[:2000]]
        keys = set()
        for item in metadata:
            attrs = pixels.JsonAttributes(item)
            declared = attrs.get("NumberOfTemporalPositions")
            temporal = attrs.get("TemporalPositionIdentifier")
            if temporal is not None:
                keys.add(("tpi", temporal))
            elif attrs.get("TriggerTime") is not None and declared:
                keys.add(("trigger", attrs.get("TriggerTime")))
        if len(keys) >= 3:
            found.append([series])
        elif metadata:
            attrs = pixels.JsonAttributes(metadata[0])
            singles.setdefault((attrs.get("Rows"), attrs.get("Columns"), series.description), []).append(series)
    found.extend(group for group in singles.values() if len(group) >= 3)
    return found
