"""Isolation harness registrations of the viewer: rendered images, MPR, the viewer page, key images."""

import secrets
import tempfile
from pathlib import Path

import numpy as np

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

# OHIF's build files and single-page application routes: the path names a file of
# the build, never an object; the page holds no data (OHIF reads it over DICOMweb).
isolation.exempt("/ohif/{path}", "OHIF's own build files and application page: no object in the path")


@isolation.factory
def hanging_protocols(tenant):
    """The institution's hanging protocol and its radiologist's own."""
    from viewer.hanging.actions import do_save_hanging_protocol

    token = secrets.token_hex(4)
    panes = [{"study": "current"}, {"study": "prior"}]
    shared = do_save_hanging_protocol(
        acting_user=tenant.institution_admin, institution=tenant.institution, name=f"Secret{token} CT", panes=panes
    )
    own = do_save_hanging_protocol(acting_user=tenant.radiologist, name=f"Secret{token} mine", panes=panes)
    return isolation.Made(
        values={"hanging_protocol.id": shared.pk, "own_hanging_protocol.id": own.pk},
        secrets=[shared.name, own.name],
    )


isolation.route(
    "/api/v1/hanging-protocols/",
    bodies={
        "post": {"institution": isolation.Ref("institution.id"), "name": "INTRUDER", "panes": [{"study": "current"}]}
    },
    also_allowed={400},
)
isolation.route(
    "/api/v1/hanging-protocols/{pk}/",
    pk="hanging_protocol.id",
    bodies={"put": {"name": "TAKEN", "panes": [{"study": "current"}]}, "patch": {"name": "TAKEN"}},
)
isolation.route("/api/v1/hanging-protocols/match/", queries=[{"study": isolation.Ref("study.id")}], also_allowed={400})


@isolation.factory
def dce_map_job(tenant):
    """A DCE map job (queued) on the institution's phantom series."""
    from archive.models import Series
    from viewer.analysis.actions import do_start_dce_map_job

    series = Series.objects.select_related("study__patient").get(pk=tenant.made["volume.series.id"])
    job = do_start_dce_map_job(
        acting_user=tenant.radiologist,
        study=series.study,
        series=[series],
        mask={"regions": [{"slice": 0}]},
        model="tofts",
        aif={"population": "parker"},
        options={},
    )
    return isolation.Made(values={"dce_map_job.id": job.pk}, secrets=[])


isolation.param("job_id", "dce_map_job.id")
isolation.route(
    "/api/v1/analysis/dce/{job_id}/maps/{name}/{index}/",
    job_id="dce_map_job.id",
    name=isolation.const("ktrans"),
    index=isolation.const("0"),
    reachable=False,
    reason="a queued job has no map yet; reading a finished one is tested in tests/viewer/test_dce_maps.py",
)
isolation.route(
    "/api/v1/analysis/dce/regions/",
    queries=[{"study": isolation.Ref("volume.study.id")}],
    also_allowed={400},
)


@isolation.factory
def dce_region(tenant):
    """A region analysed on the institution's phantom series, with the curves its key image plots."""
    from archive.models import Series
    from viewer.analysis.actions import do_record_dce_region

    series = Series.objects.select_related("study__patient").get(pk=tenant.made["volume.series.id"])
    label = f"Secret{secrets.token_hex(4)}"
    region = do_record_dce_region(
        acting_user=tenant.radiologist,
        study=series.study,
        series=[series],
        region={"slice": 0},
        label=label,
        results={"times_s": [0.0, 10.0, 20.0], "signal": [100.0, 150.0, 160.0], "enhancement": {"curve_type": "I"}},
    )
    return isolation.Made(values={"dce_region.id": region.pk}, secrets=[label])


isolation.route("/api/v1/analysis/dce/regions/{region_id}/key-image/", region_id="dce_region.id")
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


@isolation.factory
def parametric_map(tenant):
    """A CT series of its own study and a Parametric Map stored over it, as a DCE job stores one."""
    from pydicom.uid import generate_uid

    from viewer.analysis import parametric

    token = secrets.token_hex(4)
    datasets, _ = ct_datasets(size=16, slices=2, seed=int(token, 16) % 1000)
    frame_of_reference = generate_uid()
    with tempfile.TemporaryDirectory() as folder:
        images = []
        for ds in datasets:
            ds.PatientName, ds.PatientID, ds.FrameOfReferenceUID = (
                f"Secret{token}^MAP",
                f"PM-{token}",
                frame_of_reference,
            )
            path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            images.append(store_instance(path, institution=tenant.institution).instance)
        values = np.full((len(datasets), 16, 16), 0.1, dtype=np.float32)
        pm = parametric.parametric_map("ktrans", "Ktrans", "1/min", values, datasets, series_number=901, model="tofts")
        stored = store_instance(parametric.write(pm, Path(folder) / "ktrans.dcm"), institution=tenant.institution)
    return isolation.Made(
        values={
            "parametric_map.id": stored.instance.pk,
            "parametric_map.over": images[0].pk,
            "parametric_map.study.id": images[0].series.study_id,
        },
        secrets=[f"Secret{token}", f"PM-{token}"],
    )


isolation.route("/api/v1/analysis/parametric-maps/", queries=[{"study": isolation.Ref("parametric_map.study.id")}])
isolation.route(
    "/api/v1/analysis/parametric-maps/{map_id}/values/",
    map_id="parametric_map.id",
    queries=[{"over": isolation.Ref("parametric_map.over")}],
)
