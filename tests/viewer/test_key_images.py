"""Marking key images: the action, its API and who may do what."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from pacs_cloud.models import AuditEvent
from viewer.actions import do_mark_key_image, do_unmark_key_image
from viewer.models import KeyImage

from ..conftest import api_client
from .conftest import sample, store, with_new_uids


@pytest.fixture
def mr(tenants, tmp_path):
    return store(with_new_uids(sample("emri_small.dcm")), tenants.a.institution, tmp_path)


def test_marking_a_frame_records_study_instance_frame_user_and_note(mr, tenants):
    key = do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=4, note="lesion")
    assert (key.study, key.instance, key.frame, key.user, key.note) == (
        mr.series.study,
        mr,
        4,
        tenants.a.radiologist,
        "lesion",
    )
    event = AuditEvent.objects.get(action="viewer.key_image.mark")
    assert event.object_id == str(key.pk) and event.detail["frame"] == 4


def test_marking_the_same_frame_again_keeps_one_row_and_updates_the_note(mr, tenants):
    first = do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=2)
    again = do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=2, note="compare")
    assert first.pk == again.pk and KeyImage.objects.get().note == "compare"
    # Another reader marks the same frame separately.
    do_mark_key_image(acting_user=tenants.a.clinician, instance=mr, frame=2)
    assert KeyImage.objects.count() == 2


def test_a_frame_that_does_not_exist_or_an_overlong_note_is_refused(mr, tenants):
    with pytest.raises(ValidationError):
        do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=11)
    with pytest.raises(ValidationError):
        do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=1, note="x" * 501)
    assert not KeyImage.objects.exists()


def test_only_the_reader_who_marked_may_unmark(mr, tenants):
    key = do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=1)
    with pytest.raises(PermissionDenied):
        do_unmark_key_image(key, acting_user=tenants.a.clinician)
    do_unmark_key_image(key, acting_user=tenants.a.radiologist)
    assert not KeyImage.objects.exists()
    assert AuditEvent.objects.filter(action="viewer.key_image.unmark").count() == 1


def test_the_api_marks_lists_and_unmarks(mr, tenants):
    client = api_client(tenants.a.radiologist)
    url = reverse("viewer-list-key-images", args=[mr.series.study_id])
    created = client.post(url, {"instance": str(mr.pk), "frame": 3, "note": "see"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["frame"] == 3 and body["note"] == "see" and body["mine"] is True
    assert body["rendered"].endswith(f"/instances/{mr.sop_instance_uid}/frames/3/rendered")
    assert client.post(url, {"instance": str(mr.pk), "frame": 3}, format="json").status_code == 200
    listed = api_client(tenants.a.clinician).get(url).json()["results"]
    assert len(listed) == 1 and listed[0]["mine"] is False
    other = api_client(tenants.a.clinician).delete(reverse("viewer-delete-key-image", args=[body["id"]]))
    assert other.status_code == 403
    assert client.delete(reverse("viewer-delete-key-image", args=[body["id"]])).status_code == 204
    assert client.get(url).json()["results"] == []


def test_bad_key_image_requests_are_explained(mr, tenants, tmp_path):
    client = api_client(tenants.a.radiologist)
    url = reverse("viewer-list-key-images", args=[mr.series.study_id])
    assert client.post(url, {"instance": "nope"}, format="json").status_code == 400
    assert client.post(url, {"instance": str(mr.pk), "frame": 0}, format="json").status_code == 400
    assert client.post(url, {"instance": str(mr.pk), "frame": 99}, format="json").status_code == 400
    elsewhere = store(with_new_uids(sample("CT_small.dcm")), tenants.a.institution, tmp_path)
    response = client.post(url, {"instance": str(elsewhere.pk)}, format="json")
    assert response.status_code == 400 and "instance" in response.json()


def test_outsiders_cannot_see_mark_or_unmark(mr, tenants):
    key = do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=1)
    outsider = api_client(tenants.c.radiologist)
    url = reverse("viewer-list-key-images", args=[mr.series.study_id])
    assert outsider.get(url).status_code == 404
    assert outsider.post(url, {"instance": str(mr.pk)}, format="json").status_code == 404
    assert outsider.delete(reverse("viewer-delete-key-image", args=[key.pk])).status_code == 404
    assert KeyImage.objects.count() == 1


def test_key_images_are_labelled_by_series_and_image_number(ct_volume, mr, tenants):
    vol = ct_volume()
    fourteenth = next(i for i in vol.instances if i.instance_number == 14)
    do_mark_key_image(acting_user=tenants.a.radiologist, instance=fourteenth, frame=1)
    do_mark_key_image(acting_user=tenants.a.radiologist, instance=vol.instances[0], frame=1)
    client = api_client(tenants.a.radiologist)
    listed = client.get(reverse("viewer-list-key-images", args=[fourteenth.series.study_id])).json()["results"]
    labels = {row["label"] for row in listed}
    assert labels == {"Series 2 · Image 14", f"Series 2 · Image {vol.instances[0].instance_number}"}
    # Within a multi-frame image, the frame too.
    do_mark_key_image(acting_user=tenants.a.radiologist, instance=mr, frame=4)
    row = client.get(reverse("viewer-list-key-images", args=[mr.series.study_id])).json()["results"][0]
    assert row["label"] == f"Series {mr.series.series_number} · Image {mr.instance_number} · Frame 4"
    # The viewer's manifest names every image the same way, for the report editor.
    manifest = client.get(reverse("viewer-api-study", args=[fourteenth.series.study_id])).json()
    assert "Series 2 · Image 14" in {item["label"] for item in manifest["series"][0]["instances"]}
