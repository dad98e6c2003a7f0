"""DICOM Parametric Maps (PS3.3 A.75) of DCE-MRI results, built with highdicom.

Float pixels (32-bit) carry the values themselves; the Real World Value
Mapping names the quantity and its UCUM unit, so any workstation reads
Ktrans in 1/min. The map is a new series of the study, its frames referring
to the dynamic series' first-phase slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from pacs_cloud.settings import PACS_VERSION
from viewer.pixels import JsonAttributes

# UCUM codes of the maps' units.
UNITS = {
    "1/min": Code("/min", "UCUM", "per minute"),
    "mL/mL": Code("mL/mL", "UCUM", "milliliter per milliliter"),
    "mM.s": Code("mmol/L.s", "UCUM", "millimole per liter times second"),
}
MANUFACTURER = "Cloud PACS"


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that highdicom
# copies from the source image; some senders leave them out, where the standard wants them present and empty.
TYPE_2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def complete_type_2(source: Dataset) -> None:
    """Add the Type 2 attributes ``source`` lacks, empty, so a derived object can copy them."""
    for keyword in TYPE_2_COPIED:
        if keyword not in source:
            setattr(source, keyword, "")


def parametric_map(
    name: str,
    label: str,
    unit: str,
    values: np.ndarray,
    sources: list[Dataset],
    *,
    series_number: int,
    model: str,
) -> Dataset:
    """A Parametric Map of ``values`` (slices, rows, columns; float) over the source slices ``sources``."""
    import highdicom as hd  # seconds to import: only when a map is written

    for source in sources:
        complete_type_2(source)
    values = np.ascontiguousarray(values, dtype=np.float32)
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        high = low + 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16],
        lut_explanation=f"{label} ({model.replace('_', ' ')} model)"[:64],
        unit=UNITS[unit],
        value_range=(low, high),
        slope=1,
        intercept=0,
    )
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=values,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="DCE-MRI analysis",
        software_versions=PACS_VERSION,
        device_serial_number="1",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # LINEAR_EXACT: a window narrower than 1 (ve spans 0–1) is valid only with it (PS3.3 C.11.2.1.3).
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=(low + high) / 2, window_width=high - low, voi_lut_function="LINEAR_EXACT"
            )
        ],
        series_description=f"DCE {label} {model.replace('_', ' ')}"[:64],
        content_label=name.upper()[:16],
        content_description=f"{label} map"[:64],
    )
    if "Laterality" not in pm:
        # Type 2C for paired body parts (breast, kidney…), which dciodvfy cannot tell apart: the
        # source's, or empty (unknown).
        pm.Laterality = sources[0].get("Laterality", "")
    return pm


def slices_in_source_order(ds: Dataset) -> np.ndarray:
    """The map's frames ordered along the slice normal (as the dynamic series' slices), whatever the object's order."""
    values = ds.pixel_array
    if values.ndim == 2:
        values = values[None]
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    orientation = np.array(
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float
    )
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [
        float(np.dot(normal, np.array(f.PlanePositionSequence[0].ImagePositionPatient, float))) for f in frames
    ]
    return values[np.argsort(positions)] if len(positions) == len(values) else values


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def _vector(value: object) -> np.ndarray | None:
    if isinstance(value, list) and value:
        return np.array([float(v) for v in value], dtype=float)
    return None


def _geometry(attrs: JsonAttributes, frame: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Image Position and Orientation (Patient) of frame ``frame`` (0-based), single- or multi-frame."""
    position, orientation = _vector(attrs.get("ImagePositionPatient")), _vector(attrs.get("ImageOrientationPatient"))
    if position is None:
        per_frame = attrs.get("PerFrameFunctionalGroupsSequence") or []
        shared = (attrs.get("SharedFunctionalGroupsSequence") or [None])[0]
        item = per_frame[frame] if frame < len(per_frame) else None
        for group in (item, shared):
            if group is None:
                continue
            plane = (group.get("PlanePositionSequence") or [None])[0]
            turn = (group.get("PlaneOrientationSequence") or [None])[0]
            if plane is not None and position is None:
                position = _vector(plane.get("ImagePositionPatient"))
            if turn is not None and orientation is None:
                orientation = _vector(turn.get("ImageOrientationPatient"))
    if position is None or orientation is None or len(orientation) != 6:
        return None
    return position, orientation


def map_description(metadata: dict) -> dict:
    """What a stored Parametric Map holds, from the archive's index: label, unit, frames."""
    attrs = JsonAttributes(metadata)
    shared = (attrs.get("SharedFunctionalGroupsSequence") or [JsonAttributes({})])[0]
    mapping = (shared.get("RealWorldValueMappingSequence") or [JsonAttributes({})])[0]
    unit = (mapping.get("MeasurementUnitsCodeSequence") or [JsonAttributes({})])[0]
    return {
        "label": str(mapping.get("LUTLabel", "") or attrs.get("ContentLabel", "")),
        "unit": str(unit.get("CodeMeaning", "") or unit.get("CodeValue", "")),
        "description": str(attrs.get("SeriesDescription", "") or ""),
        "frame_of_reference_uid": str(attrs.get("FrameOfReferenceUID", "") or ""),
    }


def frame_over(map_metadata: dict, image_metadata: dict, image_frame: int) -> int | None:
    """The map's frame (0-based) lying on frame ``image_frame`` (0-based) of an image, or None.

    The same frame of reference, the same orientation, and a position along
    the normal within half a slice (at least 0.5 mm) of the image's.
    """
    map_attrs, image_attrs = JsonAttributes(map_metadata), JsonAttributes(image_metadata)
    if map_attrs.get("FrameOfReferenceUID") != image_attrs.get("FrameOfReferenceUID"):
        return None
    image = _geometry(image_attrs, image_frame)
    if image is None:
        return None
    position, orientation = image
    normal = np.cross(orientation[:3], orientation[3:])
    thickness = float(image_attrs.get("SliceThickness", 0) or 0)
    tolerance = max(thickness / 2, 0.5)
    best: tuple[float, int] | None = None
    for index in range(int(map_attrs.get("NumberOfFrames", 1) or 1)):
        found = _geometry(map_attrs, index)
        if found is None or np.abs(found[1] - orientation).max() > 1e-3:
            continue
        distance = abs(float(np.dot(normal, found[0] - position)))
        if distance <= tolerance and (best is None or distance < best[0]):
            best = (distance, index)
    return None if best is None else best[1]
