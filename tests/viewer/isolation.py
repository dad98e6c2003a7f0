"""Isolation harness registrations of the viewer: rendered images, MPR, the viewer page, key images."""

import secrets
import tempfile
from pathlib import Path

from archive.ingest import store_instance
from archive.models import Instance
from tests import isolation
from viewer.actions import do_mark_key_image

from .phantom import ct_datasets


@isolation.factory
def phantom_volume(tenant):
    """A three-slice CT series (enough for MPR) of a patient only this institution knows."""
    token = secrets.token_hex(4)
    family = f"Secret{token}"
    datasets, _ = ct_datasets(size=16, slices=3, seed=int(token, 16) % 1000)
    with tempfile.TemporaryDirectory() as folder:
        for ds in datasets:
            ds.PatientName = f"{family}^PHANTOM"
            ds.PatientID = f"VOL-{token}"
            ds.AccessionNumber = f"V{token}"
            path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            instance = store_instance(path, institution=tenant.institution).instance
    series = instance.series
    return isolation.Made(
        values={"volume.series.id": series.pk, "volume.study.id": series.study_id},
        secrets=[family, f"VOL-{token}", f"V{token}"],
    )


@isolation.factory
def key_image(tenant):
    """A key image on the archive's study, marked by the institution's radiologist."""
    instance = Instance.objects.get(pk=tenant.made["instance.id"])
    note = f"key-secret-{secrets.token_hex(4)}"
    marked = do_mark_key_image(acting_user=tenant.radiologist, instance=instance, frame=1, note=note)
    return isolation.Made(values={"key_image.id": marked.pk}, secrets=[note])


isolation.param("frames", isolation.const("1"))
isolation.route(
    "/api/v1/viewer/key-images/{key_image_id}/",
    key_image_id="key_image.id",
    reachable=False,
    reason="DELETE only: the owner's unmarking is tested in tests/viewer/test_key_images.py",
)
isolation.route(
    "/api/v1/viewer/studies/{study_id}/key-images/",
    study_id="study.id",
    bodies={"post": {"instance": isolation.Ref("instance.id"), "frame": 1, "note": "intrusion"}},
)
isolation.route(
    "/api/v1/viewer/series/{series_id}/mpr/{plane}/{index}/",
    series_id="volume.series.id",
    plane=isolation.const("sagittal"),
    index=isolation.const("8"),
)
isolation.route("/viewer/series/{series_id}/3d/", series_id="volume.series.id")
isolation.route(
    "/api/v1/viewer/series/{series_id}/volume/oblique/",
    series_id="volume.series.id",
    queries=[{"plane": "coronal", "width": "32", "height": "32", "slab": "2"}],
)
isolation.route(
    "/api/v1/viewer/series/{series_id}/volume/curved/",
    series_id="volume.series.id",
    queries=[{"path": "1,1,1;9,9,4", "span": "6", "pixel": "0.5"}],
    reachable=False,
    reason="needs the clicked path (a bare GET is a 400): the owners' curved reformats are in test_volume_mpr.py",
)
isolation.route(
    "/api/v1/viewer/series/{series_id}/volume/measurements/",
    series_id="volume.series.id",
    bodies={"post": {"kind": "distance", "points": [[0, 0, 0], [3, 4, 0]]}},
    reachable=False,
    reason="POST only: the owners' measurements are tested in tests/viewer/test_volume_mpr.py",
)
isolation.route(
    "/api/v1/viewer/series/{series_id}/volume/snapshots/",
    series_id="volume.series.id",
    bodies={"post": {"kind": "oblique", "parameters": {"width": "16", "height": "16"}}},
    reachable=False,
    reason="POST only: the owners' snapshots are tested in tests/viewer/test_volume_snapshot.py",
)
