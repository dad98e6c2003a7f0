"""Server-side volume rendering of a synthetic phantom, checked against what the phantom holds."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from archive.models import Series
from viewer import caches, mpr
from viewer.pixels import RenderError
from viewer.volume import offscreen, presets, sessions
from viewer.volume.scene import VolumeScene

from . import volume_phantom as phantom
from .conftest import store

SIZE = 200


@pytest.fixture(scope="module")
def hu():
    return phantom.hounsfield()


@pytest.fixture(scope="module")
def scene(hu):
    scene = VolumeScene(phantom.volume(hu))
    yield scene
    scene.close()


def screen_grid(scene, axis_right: int, axis_up: int):
    """For each pixel, the volume-frame mm along the screen's right and up axes (parallel projection)."""
    cam = scene.camera
    mm_per_pixel = cam.height_mm / SIZE
    offsets = (np.arange(SIZE) + 0.5 - SIZE / 2) * mm_per_pixel
    across = cam.focal[axis_right] + offsets * float(np.sign(cam.right[axis_right]))
    up = cam.focal[axis_up] - offsets * float(np.sign(cam.up[axis_up]))  # row 0 is the top
    return np.meshgrid(up, across, indexing="ij")


def bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    r0 = np.clip(np.floor(rows).astype(int), 0, image.shape[0] - 2)
    c0 = np.clip(np.floor(cols).astype(int), 0, image.shape[1] - 2)
    fr, fc = rows - r0, cols - c0
    return (
        image[r0, c0] * (1 - fr) * (1 - fc)
        + image[r0 + 1, c0] * fr * (1 - fc)
        + image[r0, c0 + 1] * (1 - fr) * fc
        + image[r0 + 1, c0 + 1] * fr * fc
    )


def test_it_renders_off_screen_without_a_display():
    assert offscreen.backend() in ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow")


def test_the_mip_equals_numpys_maximum_along_the_view(scene, hu):
    scene.camera = scene.view("anterior")  # looking along +y: right = +x (columns), up = +z (slices)
    scene.set_clipping(presets.Clipping())
    scene.set_transfer(presets.preset("mip"))  # grey ramp from -200 to 800 HU
    picture = scene.render(SIZE, SIZE)[:, :, 0].astype(float)
    gap, _, col = phantom.SPACING
    z_mm, x_mm = screen_grid(scene, 0, 2)
    slices, columns = z_mm / gap, x_mm / col
    inside = (slices >= 1) & (slices <= phantom.SHAPE[0] - 2) & (columns >= 1) & (columns <= phantom.SHAPE[2] - 2)
    projection = hu.max(axis=1).astype(float)  # (slices, columns)
    expected = np.clip((bilinear(projection, slices, columns) + 200) / 1000, 0, 1) * 255
    error = np.abs(picture - expected)[inside]
    # Ray sampling and interpolation blur the edges of the rod, vessel and sphere by a pixel or so.
    assert np.median(error) <= 2
    assert np.percentile(error, 95) <= 12
    beyond = (slices < -1) | (slices > phantom.SHAPE[0]) | (columns < -1) | (columns > phantom.SHAPE[2])
    assert picture[beyond].max() <= 8  # outside the volume: the black background


def test_the_bone_preset_shows_the_spine_where_the_phantom_put_it(scene):
    scene.set_clipping(presets.Clipping(table_cut=True))
    scene.set_transfer(presets.preset("bone"))
    _, _, col = phantom.SPACING
    scene.camera = scene.view("anterior")
    bright = scene.render(SIZE, SIZE).max(axis=2) > 100
    z_mm, x_mm = screen_grid(scene, 0, 2)
    gap = phantom.SPACING[0]
    length = (z_mm >= gap) & (z_mm <= (phantom.SHAPE[0] - 2) * gap)
    spine_columns = (x_mm >= phantom.SPINE_COLUMNS[0] * col - 1) & (x_mm <= phantom.SPINE_COLUMNS[1] * col + 1)
    core = (x_mm >= phantom.SPINE_COLUMNS[0] * col + 1) & (x_mm <= phantom.SPINE_COLUMNS[1] * col - 1) & length
    assert bright[core].mean() > 0.95  # the rod, over its whole length
    assert not bright[~spine_columns].any()  # soft tissue, lesion, vessel and table stay see-through
    # From the patient's left, the spine is behind the body's centre: towards the screen's right (+y).
    scene.camera = scene.view("left")
    bright = scene.render(SIZE, SIZE).max(axis=2) > 100
    _, y_mm = screen_grid(scene, 1, 2)
    _, row, _ = phantom.SPACING
    spine_rows = (y_mm >= phantom.SPINE_ROWS[0] * row - 1) & (y_mm <= phantom.SPINE_ROWS[1] * row + 1)
    assert bright.sum() > 200
    assert bright[~spine_rows].sum() == 0


def test_the_table_cut_away_removes_the_table_and_keeps_the_patient(scene):
    scene.set_transfer(presets.preset("mip"))
    scene.camera = scene.view("inferior")  # looking up from the feet: up = anterior, right = patient's left
    _, row, _ = phantom.SPACING
    y_mm, _ = screen_grid(scene, 0, 1)
    table = (y_mm >= phantom.TABLE_ROWS[0] * row + 0.5) & (y_mm <= phantom.TABLE_ROWS[1] * row - 0.5)
    spine = (y_mm >= phantom.SPINE_ROWS[0] * row + 1) & (y_mm <= phantom.SPINE_ROWS[1] * row - 1)
    scene.set_clipping(presets.Clipping())
    whole = scene.render(SIZE, SIZE)[:, :, 0]
    scene.set_clipping(presets.Clipping(table_cut=True))
    cut = scene.render(SIZE, SIZE)[:, :, 0]
    table_columns = whole[table].reshape(-1)
    assert np.percentile(table_columns, 90) > 100  # 250 HU through the MIP window
    assert cut[table].max() <= 8
    assert np.array_equal(whole[spine] > 200, cut[spine] > 200)


def test_a_flat_frame_leaves_shading_out_once_and_a_half_resolution_scene_shows_the_same_spine(scene, hu):
    scene.set_clipping(presets.Clipping())
    scene.set_transfer(presets.preset("bone"))
    scene.camera = scene.view("anterior")
    shaded = scene.render(SIZE, SIZE).astype(float)
    flat = scene.render(SIZE, SIZE, flat=True).astype(float)
    assert np.abs(shaded - flat).mean() > 1  # lit and unlit differ
    assert np.array_equal(scene.render(SIZE, SIZE), shaded.astype(np.uint8))  # shading is back
    preview = VolumeScene(phantom.volume(hu), reduce=2)
    preview.set_transfer(presets.preset("bone"))
    preview.camera = scene.camera
    assert preview.spacing.tolist() == (scene.spacing * 2).tolist()
    spine, half = shaded.max(axis=2) > 100, preview.render(SIZE, SIZE, flat=True).max(axis=2) > 100
    # Coarser voxels blur the rod by about one of them: it looks a little wider, never elsewhere.
    assert (spine & half).sum() / spine.sum() > 0.8 and (half & ~spine).sum() / half.sum() < 0.3
    preview.close()


def test_a_clipping_box_and_plane_cut_the_spine_away(scene):
    scene.set_transfer(presets.preset("bone"))
    scene.camera = scene.view("anterior")
    scene.set_clipping(presets.Clipping(box=(0.0, 0.4, 0.0, 1.0, 0.0, 1.0), table_cut=True))
    assert scene.render(SIZE, SIZE).max() <= 60  # the spine lies at 45–55 % of the columns
    _, _, col = phantom.SPACING
    keep_left = ((0.0, 0.0, 0.0), (-1.0, 0.0, 0.0))  # only what lies at x <= 0: nothing
    scene.set_clipping(presets.Clipping(planes=[keep_left], table_cut=True))
    assert scene.render(SIZE, SIZE).max() <= 60


def test_the_transfer_function_is_edited_and_windowed():
    bone = presets.preset("bone")
    edited = presets.edited(bone, {"opacity": [[300, 0], [310, 1]], "blend": "composite", "shade": False})
    assert edited.name == "custom" and edited.opacity_points() == [(300, 0), (310, 1)] and not edited.shade
    windowed = edited.windowed(shift=100, scale=2)
    assert windowed.opacity_points() == [(295 + 100, 0), (315 + 100, 1)]
    for bad in ({"opacity": [[1, 0]]}, {"colour": [[0, 2, 0, 0], [1, 0, 0, 0]]}, {"blend": "x"}, {"opacity": "no"}):
        with pytest.raises(RenderError):
            presets.edited(bone, bad)
    with pytest.raises(RenderError):
        presets.preset("rainbow")
    with pytest.raises(RenderError):
        presets.Clipping.parse({"box": [0.5, 0.2, 0, 1, 0, 1]})


# Sessions over an archived series -------------------------------------------


@pytest.fixture
def archived_phantom(tenants, tmp_path):
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in phantom.datasets()]
    return Series.objects.get(pk=instances[0].series_id)


def open_for(user, series):
    return sessions.open_session(
        user=user, study_id=series.study_id, series_id=series.pk, volume=mpr.series_volume(series)
    )


def test_a_session_holds_the_2d_cache_volume_once_and_frees_its_memory(archived_phantom, tenants, settings):
    series = archived_phantom
    session = open_for(tenants.a.radiologist, series)
    volume = mpr.series_volume(series)
    assert session.volume is volume  # the 2D/MPR cache's own array, not a copy
    assert session.scene.volume.data is volume.data
    budget = caches.decoded_cache()
    assert budget.size_bytes == volume.nbytes + session.nbytes
    assert sessions.get_session(session.id, tenants.a.clinician) is None  # never another user's
    assert sessions.get_session(session.id, tenants.a.radiologist) is session
    scene = weakref.ref(session.scene)
    settings.VIEWER_3D_IDLE_SECONDS = 60
    assert sessions.expire_idle() == 0
    assert sessions.expire_idle(now=session.last_used + 61) == 1
    sessions.settled()  # the release queued before it has run
    gc.collect()
    assert scene() is None
    assert budget.size_bytes == volume.nbytes
    assert sessions.get_session(session.id, tenants.a.radiologist) is None
    # The memory budget closes the least recently used session when it needs the room.
    first = open_for(tenants.a.radiologist, series)
    room = mpr.series_volume(series).nbytes + first.nbytes
    caches.decoded_cache().max_bytes = room + first.nbytes // 2  # room for one session only
    try:
        second = open_for(tenants.a.clinician, series)
        assert first.closed and not second.closed
        assert sessions.get_session(first.id, tenants.a.radiologist) is None
    finally:
        caches.decoded_cache().max_bytes = settings.VIEWER_DECODED_CACHE_MB * 1024 * 1024
        for session in sessions.open_sessions():
            sessions.close(session.id)
