"""Snapshots of 3D and MPR views: Secondary Captures in the study, key images, retrievable over WADO-RS."""

from __future__ import annotations

import json

import numpy as np
from dicomweb_client.api import DICOMwebClient

from archive.models import Series
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import AuditEvent
from viewer.models import KeyImage

from ..conftest import api_client
from . import volume_phantom as phantom
from .conftest import store
from .test_volume_socket import next_frame, next_text, open_socket

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_a_3d_and_an_mpr_snapshot_become_key_images_retrievable_by_wado_rs(tenants, live_url, tmp_path):
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in phantom.datasets()]
    series = Series.objects.get(pk=instances[0].series_id)
    study = series.study
    reader = tenants.a.radiologist
    with open_socket(live_url, reader, series) as socket:
        next_text(socket)
        socket.send(json.dumps({"type": "size", "width": 256, "height": 192}))
        socket.send(json.dumps({"type": "preset", "name": "mip"}))
        next_frame(socket)
        socket.send(json.dumps({"type": "snapshot", "note": "MIP of the chest"}))
        saved_3d = next_text(socket, timeout=30)
    assert saved_3d["type"] == "snapshot" and saved_3d["study_instance_uid"] == study.study_instance_uid
    answer = api_client(reader).post(
        f"/api/v1/viewer/series/{series.pk}/volume/snapshots/",
        {"kind": "oblique", "parameters": {"plane": "coronal", "spin": 10, "width": 128, "height": 96, "slab": 10}},
        format="json",
    )
    assert answer.status_code == 201
    saved_mpr = answer.json()
    # Both are the reader's key images of the study, shown in the viewer's key image list.
    marked = KeyImage.objects.filter(study=study, user=reader)
    assert {k.instance.sop_instance_uid for k in marked} == {
        saved_3d["sop_instance_uid"],
        saved_mpr["sop_instance_uid"],
    }
    listed = api_client(reader).get(f"/api/v1/viewer/studies/{study.pk}/key-images/").json()
    assert {str(k.pk) for k in marked} <= {item["id"] for item in listed["results"]}
    assert AuditEvent.objects.filter(action="viewer.volume.snapshot", actor_id=reader.pk).count() == 2
    # In the archive: Secondary Captures of the same patient and study, over WADO-RS.
    _, key = issue_token(tenants.a.clinician, name="test")
    client = DICOMwebClient(url=f"{live_url}/dicomweb", headers={"Authorization": f"Bearer {key}"})
    ds = client.retrieve_instance(
        study.study_instance_uid, saved_3d["series_instance_uid"], saved_3d["sop_instance_uid"]
    )
    assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.PatientID == "PHANTOM-3D"
    assert str(ds.PatientName) == "Zhang^San=张^三"
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (192, 256, 3)
    rendering = json.loads(ds.ImageComments)["rendering"]
    assert rendering["kind"] == "3d" and rendering["transfer"]["name"] == "mip" and rendering["camera"]["height_mm"] > 0
    assert ds.pixel_array.max() > 100  # the picture, not an empty frame
    ds = client.retrieve_instance(
        study.study_instance_uid, saved_mpr["series_instance_uid"], saved_mpr["sop_instance_uid"]
    )
    assert (ds.Rows, ds.Columns) == (96, 128) and json.loads(ds.ImageComments)["rendering"]["plane"] == "coronal"
    assert np.array_equal(ds.pixel_array[:, :, 0], ds.pixel_array[:, :, 1])  # greyscale reformat
    # Another hospital can neither save into the study nor read the snapshot.
    refused = api_client(tenants.c.radiologist).post(
        f"/api/v1/viewer/series/{series.pk}/volume/snapshots/", {"kind": "oblique", "parameters": {}}, format="json"
    )
    assert refused.status_code == 404
    assert KeyImage.objects.filter(study=study).count() == 2


def test_a_snapshot_of_a_series_whose_patient_has_an_issuer_and_lacks_type_2_attributes_is_stored(tenants, tmp_path):
    from viewer.volume.actions import do_save_snapshot

    datasets = phantom.datasets()
    for ds in datasets:
        ds.IssuerOfPatientID = "ALPHA-HIS"
        ds.pop("PatientBirthDate", None)  # Type 2, left out by some modalities
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in datasets]
    series = Series.objects.get(pk=instances[0].series_id)
    key_image = do_save_snapshot(
        acting_user=tenants.a.radiologist,
        series=series,
        picture=np.zeros((64, 64, 3), dtype=np.uint8),
        parameters={"kind": "3d"},
        right=np.array([1.0, 0.0, 0.0]),
        down=np.array([0.0, 0.0, -1.0]),
        description="3D bone",
    )
    stored = key_image.instance
    assert stored.series.study_id == series.study_id and stored.sop_class_uid == SECONDARY_CAPTURE
