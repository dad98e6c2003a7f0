"""DICOMweb rendered and thumbnail resources (PS3.18 10.4, 10.5) over HTTP."""

from __future__ import annotations

import base64
import email
import io

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from PIL import Image

from pacs_cloud.models import AuditEvent
from viewer import caches, pixels, render

from ..conftest import PASSWORD, api_client
from .conftest import sample, store, store_sample, with_new_uids


def frame_url(instance, frame=1, kind="rendered"):
    series = instance.series
    return (
        f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}/frames/{frame}/{kind}"
    )


def instance_url(instance, kind="rendered"):
    series = instance.series
    return (
        f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}/{kind}"
    )


def body_of(response) -> bytes:
    if not response.streaming:
        return response.content

    async def collect(chunks):
        return b"".join([chunk async for chunk in chunks])

    return async_to_sync(collect)(response.streaming_content)


def decode(response):
    return Image.open(io.BytesIO(body_of(response)))


@pytest.fixture
def ct(tenants, tmp_path):
    return store_sample("CT_small.dcm", tenants.a.institution, tmp_path)


@pytest.fixture
def client(tenants):
    return api_client(tenants.a.radiologist)


def test_a_frame_is_rendered_as_jpeg_by_default(ct, client):
    response = client.get(frame_url(ct))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    image = decode(response)
    assert image.format == "JPEG" and image.size == (128, 128)


@pytest.mark.parametrize(
    ("accept", "media_type", "fmt"),
    [
        ("image/png", "image/png", "PNG"),
        ("image/webp", "image/webp", "WEBP"),
        ("image/gif", "image/gif", "GIF"),
        ("text/html, image/png;q=0.5, image/webp;q=0.9", "image/webp", "WEBP"),
        ("image/*", "image/jpeg", "JPEG"),
        ('multipart/related; type="image/png"', "image/png", "PNG"),
    ],
)
def test_the_accept_header_chooses_the_media_type(ct, client, accept, media_type, fmt):
    response = client.get(frame_url(ct), HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert response["Content-Type"] == media_type
    assert decode(response).format == fmt


def test_the_accept_query_parameter_overrides_the_header(ct, client):
    response = client.get(frame_url(ct) + "?accept=image/png", HTTP_ACCEPT="image/jpeg")
    assert response["Content-Type"] == "image/png"


def test_an_unproducible_media_type_is_refused_with_406(ct, client):
    response = client.get(frame_url(ct), HTTP_ACCEPT="application/pdf")
    assert response.status_code == 406
    assert "image/jpeg" in response.json()["detail"]
    assert client.get(frame_url(ct), HTTP_ACCEPT="image/png;q=0").status_code == 406


def test_the_window_parameter_changes_the_pixels_as_the_pipeline_says(ct, client):
    ds = sample("CT_small.dcm")
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for c, w in ((40, 400), (300, 1500)):
        response = client.get(frame_url(ct) + f"?window={c},{w},linear-exact", HTTP_ACCEPT="image/png")
        shown = np.asarray(decode(response)).astype(int)
        expected = np.where(hu <= c - w / 2, 0, np.where(hu > c + w / 2, 255, ((hu - c) / w + 0.5) * 255))
        assert np.abs(shown - np.floor(expected + 0.5)).max() <= 1


def test_viewport_and_quality_are_honoured(ct, client):
    small = client.get(frame_url(ct) + "?viewport=64,32")
    assert decode(small).size == (32, 32)
    low = client.get(frame_url(ct) + "?quality=20")
    high = client.get(frame_url(ct) + "?quality=100")
    assert len(low.content) < len(high.content)


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("window=40", "window"),
        ("window=40,0", "window"),
        ("viewport=0,10", "viewport"),
        ("quality=0", "quality"),
        ("quality=high", "quality"),
        ("voi=first", "voi"),
    ],
)
def test_bad_parameters_get_a_400_with_the_reason(ct, client, query, word):
    response = client.get(frame_url(ct) + "?" + query)
    assert response.status_code == 400
    assert word in response.json()["detail"]


def test_a_missing_frame_is_404_and_a_malformed_frame_list_400(ct, client):
    assert client.get(frame_url(ct, 2)).status_code == 404
    assert client.get(frame_url(ct, "x")).status_code == 400


def test_responses_carry_an_etag_and_private_caching(ct, client):
    first = client.get(frame_url(ct))
    etag = first["ETag"]
    assert etag.startswith('"') and "private" in first["Cache-Control"]
    assert "Accept" in first["Vary"]
    again = client.get(frame_url(ct), HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b""
    other = client.get(frame_url(ct) + "?window=0,100")
    assert other["ETag"] != etag


def test_a_rendered_frame_is_served_from_the_shared_cache_without_decoding(ct, client, monkeypatch):
    client.get(frame_url(ct))
    caches.decoded_cache().clear()  # as if another web worker answered
    calls = []
    real = render.read_frame
    monkeypatch.setattr(render, "read_frame", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert client.get(frame_url(ct)).status_code == 200
    assert calls == []
    assert client.get(frame_url(ct) + "?window=1,2").status_code == 200
    assert calls == [1]


def test_re_windowing_a_frame_reuses_the_decoded_pixels(ct, client, monkeypatch):
    client.get(frame_url(ct))
    calls = []
    real = render.read_frame
    monkeypatch.setattr(render, "read_frame", lambda *a, **k: calls.append(1) or real(*a, **k))
    for c in range(5):
        assert client.get(frame_url(ct) + f"?window={c * 50},400").status_code == 200
    assert calls == []


# Access and audit -------------------------------------------------------------------------------


def test_an_outsider_gets_404_for_every_rendered_resource(ct, tenants):
    outsider = api_client(tenants.c.radiologist)
    series = ct.series
    study = series.study
    base = f"/dicomweb/studies/{study.study_instance_uid}"
    urls = [
        frame_url(ct),
        frame_url(ct, kind="thumbnail"),
        instance_url(ct),
        instance_url(ct, "thumbnail"),
        f"{base}/series/{series.series_instance_uid}/rendered",
        f"{base}/series/{series.series_instance_uid}/thumbnail",
        f"{base}/rendered",
        f"{base}/thumbnail",
    ]
    for url in urls:
        assert outsider.get(url).status_code == 404, url
    # An institution administrator sees no pixels by that role alone.
    assert api_client(tenants.a.institution_admin).get(frame_url(ct)).status_code == 404


def test_unauthenticated_requests_are_refused(ct):
    from rest_framework.test import APIClient

    response = APIClient().get(frame_url(ct))
    assert response.status_code == 401


def test_http_basic_and_the_browser_session_are_accepted(ct, tenants, client):
    from django.test import Client

    user = tenants.a.clinician
    basic = base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode()
    from rest_framework.test import APIClient

    assert APIClient().get(frame_url(ct), HTTP_AUTHORIZATION=f"Basic {basic}").status_code == 200
    browser = Client()
    browser.force_login(user)
    assert browser.get(frame_url(ct)).status_code == 200


def test_opening_a_study_is_audited_once_not_per_frame(tenants, tmp_path, client):
    ds = sample("emri_small.dcm")
    instance = store(with_new_uids(ds), tenants.a.institution, tmp_path)
    for frame in range(1, 11):
        assert client.get(frame_url(instance, frame)).status_code == 200
    client.get(frame_url(instance, 1, "thumbnail"))
    events = AuditEvent.objects.filter(action="study.view", object_id=str(instance.series.study_id))
    assert events.count() == 1
    event = events.get()
    assert event.actor == tenants.a.radiologist.username
    assert event.patient_id == instance.series.study.patient.patient_id
    # Another reader opening the same study is a new event.
    api_client(tenants.a.clinician).get(frame_url(instance, 1))
    assert events.count() == 2


# Other resources -------------------------------------------------------------------------------------


def parts(response):
    body = body_of(response)
    message = email.message_from_bytes(b"Content-Type: " + response["Content-Type"].encode() + b"\r\n\r\n" + body)
    return [
        (part.get_content_type(), part["Content-Location"], part.get_payload(decode=True))
        for part in message.get_payload()
    ]


def test_several_frames_come_back_as_multipart_related(tenants, tmp_path, client):
    instance = store(with_new_uids(sample("emri_small.dcm")), tenants.a.institution, tmp_path)
    response = client.get(frame_url(instance, "1,3,5"), HTTP_ACCEPT='multipart/related; type="image/png"')
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="image/png"')
    got = parts(response)
    assert [p[1].split("/frames/")[1] for p in got] == ["1/rendered", "3/rendered", "5/rendered"]
    frames = [np.asarray(Image.open(io.BytesIO(p[2]))) for p in got]
    assert all(p[0] == "image/png" for p in got)
    assert not np.array_equal(frames[0], frames[2])


def test_a_series_and_a_study_render_every_image(tenants, tmp_path, client):
    first = store(with_new_uids(sample("CT_small.dcm")), tenants.a.institution, tmp_path)
    study_uid = first.series.study.study_instance_uid
    mr = with_new_uids(sample("MR_small.dcm"), study=study_uid)
    ct = sample("CT_small.dcm")
    # The same patient in every instance of a study (the archive refuses a mismatch).
    mr.PatientID, mr.PatientName, mr.PatientSex = ct.PatientID, ct.PatientName, ct.get("PatientSex", "")
    mr.PatientBirthDate = ct.get("PatientBirthDate", "")
    second = store(mr, tenants.a.institution, tmp_path)
    series_url = f"/dicomweb/studies/{study_uid}/series/{second.series.series_instance_uid}/rendered"
    assert len(parts(client.get(series_url))) == 1
    study_parts = parts(client.get(f"/dicomweb/studies/{study_uid}/rendered"))
    assert len(study_parts) == 2
    assert all(p[0] == "image/jpeg" for p in study_parts)


def test_a_multi_frame_instance_renders_as_an_animated_gif(tenants, tmp_path, client):
    instance = store(with_new_uids(sample("emri_small.dcm")), tenants.a.institution, tmp_path)
    response = client.get(instance_url(instance), HTTP_ACCEPT="image/gif")
    image = decode(response)
    assert image.format == "GIF" and image.n_frames == 10
    first_only = decode(client.get(instance_url(instance)))
    assert first_only.format == "JPEG"


def test_thumbnails_fit_a_small_box_at_every_level(tenants, tmp_path, client):
    instance = store(with_new_uids(sample("US1_UNCR.dcm")), tenants.a.institution, tmp_path)  # 640x480 RGB
    series, study = instance.series, instance.series.study
    base = f"/dicomweb/studies/{study.study_instance_uid}"
    for url in (
        f"{base}/thumbnail",
        f"{base}/series/{series.series_instance_uid}/thumbnail",
        instance_url(instance, "thumbnail"),
        frame_url(instance, 1, "thumbnail"),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        image = decode(response)
        assert image.size == (128, 96) and image.mode == "RGB"
    assert decode(client.get(f"{base}/thumbnail?viewport=64,64")).size == (64, 48)


def test_a_study_without_images_has_no_thumbnail(tenants, tmp_path, client):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "SR-ONLY", "SR"
    sr = store(ds, tenants.a.institution, tmp_path)
    study_uid = sr.series.study.study_instance_uid
    assert client.get(f"/dicomweb/studies/{study_uid}/thumbnail").status_code == 404
    assert client.get(instance_url(sr)).status_code == 422


def test_a_colour_image_renders_in_colour(tenants, tmp_path, client):
    instance = store(with_new_uids(sample("US1_UNCR.dcm")), tenants.a.institution, tmp_path)
    image = decode(client.get(frame_url(instance), HTTP_ACCEPT="image/png"))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), sample("US1_UNCR.dcm").pixel_array)


def test_compressed_instances_render_over_http(tenants, tmp_path, client):
    for name in (
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
    ):
        instance = store(with_new_uids(sample(name)), tenants.a.institution, tmp_path)
        response = client.get(frame_url(instance), HTTP_ACCEPT="image/png")
        assert response.status_code == 200, name


@pytest.mark.parametrize(
    "name", ["693_UNCI.dcm", "MR_small_implicit.dcm", "emri_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
)
def test_native_frames_are_read_straight_from_storage_exactly(tenants, tmp_path, name):
    instance = store(with_new_uids(sample(name)), tenants.a.institution, tmp_path)
    ds = sample(name)
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = ds.pixel_array.reshape(frames, ds.Rows, ds.Columns)
    for index in range(frames):
        frame = render.read_native_frame(instance, index)
        assert frame is not None, "expected the direct read"
        assert np.array_equal(frame.pixels, expected[index])
        assert frame.info.windows == pixels.frame_info(ds, index).windows


def test_objects_the_direct_read_cannot_vouch_for_are_parsed_in_full(tenants, tmp_path):
    from pydicom.dataelem import DataElement

    ds = with_new_uids(sample("CT_small.dcm"))
    ds.add(DataElement(0xFFFCFFFC, "OB", b"\0" * 16))  # Data Set Trailing Padding after the pixels
    padded = store(ds, tenants.a.institution, tmp_path)
    assert render.read_native_frame(padded, 0) is None
    lut = store(with_new_uids(sample("mlut_18.dcm")), tenants.a.institution, tmp_path)
    assert render.read_native_frame(lut, 0) is None  # the Modality LUT is bulk data in the index
    compressed = store(with_new_uids(sample("MR_small_RLE.dcm")), tenants.a.institution, tmp_path)
    assert render.read_native_frame(compressed, 0) is None
    for instance, name in ((padded, "CT_small.dcm"), (lut, "mlut_18.dcm"), (compressed, "MR_small.dcm")):
        frame = render.read_frame(instance, 0)
        assert np.array_equal(frame.pixels, sample(name).pixel_array)


def test_an_instance_added_to_a_series_already_viewed_is_found(tenants, tmp_path, client):
    first = store(with_new_uids(sample("CT_small.dcm")), tenants.a.institution, tmp_path)
    series = first.series
    assert client.get(frame_url(first)).status_code == 200
    later = with_new_uids(
        sample("CT_small.dcm"), study=series.study.study_instance_uid, series=series.series_instance_uid
    )
    second = store(later, tenants.a.institution, tmp_path)
    assert client.get(frame_url(second)).status_code == 200


def test_an_object_missing_from_storage_is_reported(ct, client):
    from archive.storage import get_storage

    get_storage().delete(ct.storage_key)
    response = client.get(frame_url(ct))
    assert response.status_code == 404
    assert "storage" in response.json()["detail"]


def test_pixel_data_no_codec_can_read_is_a_422_with_the_reason(tenants, tmp_path, client):
    # A 12-bit JPEG Extended stream with a misplaced marker segment (a known-bad sample file).
    broken = store(with_new_uids(sample("JPEG-lossy.dcm")), tenants.a.institution, tmp_path)
    response = client.get(frame_url(broken))
    assert response.status_code == 422
    assert "cannot decode" in response.json()["detail"]
