"""Oblique and curved MPR and 3D measurements, checked against the phantom's geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from archive.models import Series
from viewer.pixels import RenderError
from viewer.volume import measure, reslice

from ..conftest import api_client
from . import volume_phantom as phantom
from .conftest import store

GAP, ROW, COL = phantom.SPACING


@pytest.fixture(scope="module")
def hu():
    return phantom.hounsfield()


@pytest.fixture(scope="module")
def volume(hu):
    return phantom.volume(hu)


def mm(k, r, c):
    """Voxel (slice, row, column) → volume-frame mm (x, y, z)."""
    return np.array([c * COL, r * ROW, k * GAP])


def test_an_unturned_axial_plane_is_the_slice_itself(volume, hu):
    right, down = reslice.base_axes(volume, "axial")
    plane = reslice.Plane(mm(17, 63.5, 63.5), right, down, 128, 128, COL)
    assert np.allclose(reslice.oblique(volume, plane), hu[17])


def test_a_turned_plane_follows_the_spine_along_its_length(volume):
    # Coronal through the spine's centre row, turned 20° about its vertical axis: still a plane
    # containing the (vertical) spine axis, so the spine shows over the whole height.
    right, down = reslice.base_axes(volume, "coronal")
    right, down = reslice.rotated_axes(right, down, 0, 20)
    assert abs(np.dot(right, down)) < 1e-9
    centre = mm(31.5, 88, 64)
    plane = reslice.Plane(centre, right, down, 64, 150, 0.8)
    values = reslice.oblique(volume, plane)
    middle_rows = slice(20, 130)  # inside the 126 mm of slices
    assert np.all(values[middle_rows, 30:34] > 600)
    # Tilted 90° about the horizontal axis, the coronal plane becomes axial (normal along z).
    right, down = reslice.rotated_axes(*reslice.base_axes(volume, "coronal"), 90, 0)
    assert abs(abs(np.cross(right, down)[2]) - 1) < 1e-9


def test_thick_slabs_project_maximum_minimum_and_mean(volume, hu):
    right, down = reslice.base_axes(volume, "axial")
    thin_plane = reslice.Plane(mm(40, 63.5, 63.5), right, down, 128, 128, COL)
    thin = reslice.oblique(volume, thin_plane)
    mip = reslice.oblique(volume, thin_plane, slab_mm=20, mode="mip")
    minip = reslice.oblique(volume, thin_plane, slab_mm=20, mode="minip")
    average = reslice.oblique(volume, thin_plane, slab_mm=20, mode="avg")
    assert np.all(mip >= thin - 1e-3) and np.all(minip <= thin + 1e-3)
    assert np.all((average >= minip - 1e-3) & (average <= mip + 1e-3))
    # The slab spans slices 35–45: the vessel of each of those slices shows in the MIP.
    for k in (35, 45):
        assert mip[phantom.VESSEL_ROW, int(round(phantom.vessel_column(k)))] > 300
    assert np.allclose(mip, hu[35:46].max(axis=0), atol=60)
    with pytest.raises(RenderError):
        reslice.oblique(volume, thin_plane, slab_mm=5, mode="median")


def vessel_path_mm():
    return [mm(*point) for point in phantom.vessel_path()]


def test_the_curved_reformat_straightens_the_vessel(volume):
    line = reslice.centreline(vessel_path_mm(), 0.5, np.array([0.0, 0.0, 1.0]))
    straight = reslice.straightened(volume, line, 30)
    assert straight.shape == (len(line.points), 60)
    # Down the middle: contrast over the whole length; 6 mm to either side: soft tissue.
    assert np.all(straight[:, 29:31] > 250)
    assert np.all(np.abs(straight[:, [17, 42]] - 40) < 30)
    section, plane = reslice.cross_section(volume, line, line.length_mm / 2, 20)
    lumen_mm2 = (section > 195).sum() * plane.pixel_mm**2
    radius = phantom.VESSEL_RADIUS * COL
    assert lumen_mm2 == pytest.approx(np.pi * radius**2, rel=0.35)
    assert section[20, 20] > 300  # the centre of the cross-section is in the lumen
    with pytest.raises(RenderError):
        reslice.centreline([[1, 2, 3]], 0.5, np.array([0.0, 0.0, 1.0]))


def test_distances_angles_and_a_region_volume_match_the_phantom(volume):
    lesion, spine = mm(*phantom.LESION_CENTRE), mm(31.5, 88, 64)
    assert measure.distance(volume, lesion, spine) == pytest.approx(np.linalg.norm(lesion - spine))
    assert measure.distance(volume, mm(0, 0, 0), mm(10, 0, 0)) == pytest.approx(20.0)
    assert measure.angle(volume, mm(0, 0, 10), mm(0, 0, 0), mm(0, 10, 0)) == pytest.approx(90)
    found = measure.region(volume, lesion, 100, 200)
    expected = 4 / 3 * np.pi * phantom.LESION_RADIUS_MM**3
    assert found["volume_mm3"] == pytest.approx(expected, rel=0.1)
    low, high = np.array(found["box_mm"])
    assert np.allclose((low + high) / 2, lesion, atol=1.0)
    with pytest.raises(RenderError, match="outside"):
        measure.region(volume, lesion, 500, 900)  # the seed is not in the range
    with pytest.raises(RenderError, match="floods"):
        measure.region(volume, mm(2, 2, 2), -1100, -900)  # the air around the patient
    with pytest.raises(RenderError):
        measure.distance(volume, [0, 0, 0], [1e4, 0, 0])


def test_the_api_answers_the_studys_readers_and_404s_everyone_else(tenants, tmp_path):
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in phantom.datasets()]
    series = Series.objects.get(pk=instances[0].series_id)
    base = f"/api/v1/viewer/series/{series.pk}/volume"
    mine, theirs = api_client(tenants.a.radiologist), api_client(tenants.c.radiologist)
    answer = mine.get(f"{base}/oblique/", {"plane": "coronal", "spin": 15, "width": 96, "height": 64, "slab": 10})
    assert answer.status_code == 200 and answer["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(answer.content)).size == (96, 64)
    path = ";".join(",".join(f"{v:.2f}" for v in p) for p in vessel_path_mm())
    curved = mine.get(f"{base}/curved/", {"path": path, "span": 30, "pixel": 0.5})
    assert curved.status_code == 200 and float(curved["X-Path-Length-Mm"]) > 100
    section = mine.get(f"{base}/curved/", {"path": path, "span": 20, "pixel": 0.5, "at": 40})
    assert Image.open(io.BytesIO(section.content)).size == (40, 40)
    lesion = mm(*phantom.LESION_CENTRE).tolist()
    measured = mine.post(
        f"{base}/measurements/", {"kind": "region", "points": [lesion], "low": 100, "high": 200}, format="json"
    )
    assert measured.status_code == 200 and measured.json()["volume_mm3"] > 1900
    distance = mine.post(f"{base}/measurements/", {"kind": "distance", "points": [[0, 0, 0], [3, 4, 0]]}, format="json")
    assert distance.json()["distance_mm"] == 5.0
    assert mine.get(f"{base}/oblique/", {"plane": "diagonal"}).status_code == 400
    assert mine.get(f"{base}/curved/", {"path": "1,2"}).status_code == 400
    assert (
        mine.post(f"{base}/measurements/", {"kind": "angle", "points": [[0, 0, 0]]}, format="json").status_code == 400
    )
    for request in (
        lambda c: c.get(f"{base}/oblique/"),
        lambda c: c.get(f"{base}/curved/", {"path": path}),
        lambda c: c.post(
            f"{base}/measurements/", {"kind": "distance", "points": [[0, 0, 0], [1, 1, 1]]}, format="json"
        ),
    ):
        assert request(theirs).status_code == 404
