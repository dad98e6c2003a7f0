"""Multiplanar reformats of a synthetic CT volume stored through the archive."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from archive.models import Series
from viewer import caches, mpr
from viewer.pixels import RenderError

from ..conftest import api_client
from .conftest import sample, store, with_new_uids


def url(series, plane, index, query=""):
    return f"/api/v1/viewer/series/{series.pk}/mpr/{plane}/{index}/" + (f"?{query}" if query else "")


def volume_of(vol):
    return mpr.series_volume(Series.objects.get(series_instance_uid=vol.series_uid))


def test_slices_are_sorted_along_the_normal_not_by_instance_number(ct_volume):
    vol = ct_volume(shuffle_numbers=True)
    volume = volume_of(vol)
    assert volume.data.dtype == np.int16
    assert np.array_equal(volume.data, vol.hu)
    assert volume.geometry.slice_spacing == pytest.approx(2.5)


def test_axial_coronal_and_sagittal_planes_are_in_radiological_orientation(ct_volume):
    vol = ct_volume()
    volume = volume_of(vol)
    hu = vol.hu
    # Axial: anterior (low y) up, the patient's right (low x) on the left.
    assert np.array_equal(mpr.reformat(volume, "axial", 7), hu[7])
    # Coronal at row 20: head (high z, last slice) up.
    assert np.array_equal(mpr.reformat(volume, "coronal", 20), hu[::-1, 20, :])
    # Sagittal at column 40: head up, anterior on the left.
    assert np.array_equal(mpr.reformat(volume, "sagittal", 40), hu[::-1, :, 40])


def test_a_sagittally_acquired_series_still_gives_a_true_axial_plane(ct_volume):
    # Rows run posterior (+y), columns down (-z); slices step to the patient's right (-x).
    vol = ct_volume(orientation=(0, 1, 0, 0, 0, -1))
    volume = volume_of(vol)
    hu = vol.hu  # (k → -x, r → -z, c → +y)
    layout = volume.geometry.plane_layout("axial")
    assert layout.count == hu.shape[1]
    # Axial planes count from the feet; rows run down (-z), so plane 10 is row 63 - 10.
    # Down the screen +y (= c), across +x (= k reversed).
    assert np.array_equal(mpr.reformat(volume, "axial", 10), hu[:, 53, :].T[:, ::-1])
    # Sagittal planes count from the patient's right, where the last acquired slice lies; each is
    # the acquired image as it was: rows -z (= r), columns +y (= c).
    assert np.array_equal(mpr.reformat(volume, "sagittal", 0), hu[-1])
    assert np.array_equal(mpr.reformat(volume, "sagittal", 39), hu[0])


def test_mip_minip_and_average_slabs(ct_volume):
    vol = ct_volume()
    volume = volume_of(vol)
    hu = vol.hu
    # 7 mm over 0.7 mm columns = 10 sagittal planes centred on 30: columns 25..34.
    slab = hu[::-1, :, 25:35]
    assert np.array_equal(mpr.reformat(volume, "sagittal", 30, slab_mm=7, mode="mip"), slab.max(axis=2))
    assert np.array_equal(mpr.reformat(volume, "sagittal", 30, slab_mm=7, mode="minip"), slab.min(axis=2))
    average = mpr.reformat(volume, "sagittal", 30, slab_mm=7, mode="avg")
    assert np.abs(average - slab.mean(axis=2)).max() <= 0.5
    # A slab at the edge is shifted inside the volume, not truncated.
    edge = mpr.reformat(volume, "axial", 0, slab_mm=10, mode="mip")
    assert np.array_equal(edge, hu[0:4].max(axis=0))


def test_the_mpr_image_has_the_physical_aspect(ct_volume, tenants):
    vol = ct_volume()
    series = Series.objects.get(series_instance_uid=vol.series_uid)
    client = api_client(tenants.a.radiologist)
    response = client.get(url(series, "sagittal", 32, "window=40,400"), HTTP_ACCEPT="image/png")
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    # 64 rows of 0.7 mm across, 40 slices of 2.5 mm down: 40 × 2.5 / 0.7 ≈ 143 pixels high.
    assert image.size == (64, 143)
    assert response["ETag"] and "private" in response["Cache-Control"]
    axial = Image.open(io.BytesIO(client.get(url(series, "axial", 3), HTTP_ACCEPT="image/png").content))
    assert axial.size == (64, 64)


def test_the_mpr_image_shows_the_window_requested(ct_volume, tenants):
    vol = ct_volume()
    series = Series.objects.get(series_instance_uid=vol.series_uid)
    client = api_client(tenants.a.radiologist)
    response = client.get(url(series, "coronal", 20, "window=40,400,linear-exact"), HTTP_ACCEPT="image/png")
    shown = np.asarray(Image.open(io.BytesIO(response.content)).resize((64, 40), Image.Resampling.NEAREST))
    x = vol.hu[::-1, 20, :].astype(float)
    expected = np.floor(np.clip((x - 40) / 400 + 0.5, 0, 1) * 255 + 0.5)
    # Resampling blurs edges a little; the bulk must agree.
    assert np.median(np.abs(shown.astype(int) - expected)) <= 2


def test_a_frame_of_a_loaded_volume_renders_exactly_as_before(ct_volume, tenants):
    vol = ct_volume()
    client = api_client(tenants.a.radiologist)
    instance = vol.instances[5]
    frame = (
        f"/dicomweb/studies/{vol.study_uid}/series/{vol.series_uid}/instances/{instance.sop_instance_uid}"
        "/frames/1/rendered?accept=image/png&window=30,300"
    )
    before = client.get(frame).content
    caches.clear_all()
    volume_of(vol)
    from viewer import render

    calls = []
    real = render.read_frame
    render.read_frame = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        after = client.get(frame).content
    finally:
        render.read_frame = real
    assert calls == []  # served from the volume
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(before))), np.asarray(Image.open(io.BytesIO(after))))


# Bad requests and access --------------------------------------------------------------


def test_bad_mpr_requests_are_explained(ct_volume, tenants):
    vol = ct_volume()
    series = Series.objects.get(series_instance_uid=vol.series_uid)
    client = api_client(tenants.a.radiologist)
    assert client.get(url(series, "oblique", 1)).status_code == 404
    out_of_range = client.get(url(series, "axial", 40))
    assert out_of_range.status_code == 404 and "outside" in out_of_range.json()["detail"]
    assert client.get(url(series, "axial", 1, "slab=thick")).status_code == 400
    assert client.get(url(series, "axial", 1, "slab=-3")).status_code == 400
    assert client.get(url(series, "axial", 1, "mode=brightest")).status_code == 400


def test_a_series_that_is_not_a_volume_cannot_be_reformatted(tenants, tmp_path):
    instance = store(with_new_uids(sample("CT_small.dcm")), tenants.a.institution, tmp_path)
    response = api_client(tenants.a.radiologist).get(url(instance.series, "sagittal", 0))
    assert response.status_code == 422
    assert "three" in response.json()["detail"]


def test_mixed_orientations_are_refused(ct_volume):
    vol = ct_volume()
    instances = vol.instances
    instances[3].metadata["00200037"]["Value"] = [0, 1, 0, 0, 0, -1]
    with pytest.raises(RenderError) as error:
        mpr.geometry(instances)
    assert "orientation" in error.value.message


def test_an_outsider_cannot_reformat_and_a_partner_needs_a_grant(ct_volume, tenants):
    vol = ct_volume()
    series = Series.objects.get(series_instance_uid=vol.series_uid)
    assert api_client(tenants.c.radiologist).get(url(series, "axial", 1)).status_code == 404
    assert api_client(tenants.b.radiologist).get(url(series, "axial", 1)).status_code == 404
    from archive.actions import grant_study_view

    grant_study_view(series.study, user=tenants.b.radiologist)
    assert api_client(tenants.b.radiologist).get(url(series, "axial", 1)).status_code == 200
