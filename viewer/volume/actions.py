"""Changes the 3D viewer makes: a snapshot saved into the study as a key image."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.ingest import Source, store_instance
from archive.models import Series
from pacs_cloud import audit

from ..actions import do_mark_key_image
from ..models import KeyImage
from ..pixels import RenderError
from ..render import load_dataset

SNAPSHOT_SERIES_NUMBER = 9300
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # DICOM LPS: -x/+x, -y/+y, -z/+z


def orientation_letters(vector: np.ndarray) -> str:
    """Patient Orientation (0020,0020) letters of a direction in patient coordinates, strongest first."""
    order = np.argsort(-np.abs(vector))
    letters = [_LETTERS[axis][1 if vector[axis] > 0 else 0] for axis in order if abs(vector[axis]) > 0.25]
    return "".join(letters[:2]) or _LETTERS[int(order[0])][1 if vector[order[0]] > 0 else 0]


def do_save_snapshot(
    *,
    acting_user: Any,
    series: Series,
    picture: np.ndarray,
    parameters: dict[str, Any],
    right: np.ndarray,
    down: np.ndarray,
    description: str,
) -> KeyImage:
    """Store ``picture`` (rows, columns, 3 uint8) as a Secondary Capture in ``series``' study; mark it a key image.

    ``right`` and ``down`` are the picture's directions in patient coordinates
    (its Patient Orientation). The rendering parameters travel in Image
    Comments as JSON, so the view can be reproduced. The object goes through
    the archive's ingest like any image that arrives, and the caller has
    already checked that ``acting_user`` may see the study.
    """
    import highdicom as hd

    from ..analysis.parametric import complete_type_2

    first = series.instances.order_by("instance_number", "pk").first()
    if first is None:
        raise RenderError("the series has no images")
    source = load_dataset(first)
    complete_type_2(source)  # highdicom copies them and refuses a source that lacks one
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(picture, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=SNAPSHOT_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Cloud PACS",
        patient_orientation=(orientation_letters(right), orientation_letters(down)),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # The archive files the picture under the study's patient only when it names that patient the same way.
    for keyword in ("SpecificCharacterSet", "IssuerOfPatientID", "OtherPatientIDsSequence"):
        if keyword in source:
            setattr(sc, keyword, source[keyword].value)
    sc.SeriesDescription = "3D snapshots"
    sc.DerivationDescription = description[:1024]
    sc.ImageComments = json.dumps({"rendering": parameters}, separators=(",", ":"))
    sc.ConversionType = "WSD"  # workstation: rendered from the series on the server
    sc.SourceImageSequence = []
    study = series.study
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{sc.SOPInstanceUID}.dcm"
        sc.save_as(path, enforce_file_format=True)
        stored = store_instance(
            path,
            institution=study.institution,
            source=Source(via="viewer", label=acting_user.get_username(), actor=acting_user),
            only_study=study.study_instance_uid,
        )
    key_image = do_mark_key_image(acting_user=acting_user, instance=stored.instance, frame=1, note=description[:500])
    audit.record(
        "viewer.volume.snapshot",
        actor=acting_user,
        object_type="study",
        object_id=study.pk,
        patient_id=study.patient.patient_id,
        institution=study.institution_id,
        detail={"sop_instance_uid": sc.SOPInstanceUID, "series": str(series.pk), "key_image": str(key_image.pk)},
    )
    return key_image
