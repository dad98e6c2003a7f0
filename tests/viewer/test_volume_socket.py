"""The 3D viewer's WebSocket: gestures in, frames out, for the study's own readers only."""

from __future__ import annotations

import io
import json
import struct
import time

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from archive.models import Series
from pacs_cloud.models import AuditEvent
from viewer import caches, mpr
from viewer.volume import sessions

from ..conftest import web_client
from . import volume_phantom as phantom
from .conftest import store
from .phantom import ct_datasets


def open_socket(live_url, user, series):
    cookie = web_client(user).cookies["sessionid"].value
    url = f"{live_url.replace('http://', 'ws://')}/ws/viewer/volume/{series.pk}/"
    return connect(url, additional_headers={"Cookie": f"sessionid={cookie}", "Origin": live_url}, max_size=None)


def next_frame(socket, timeout=20):
    """The next frame's header and picture, skipping text messages."""
    while True:
        message = socket.recv(timeout=timeout)
        if isinstance(message, bytes):
            (length,) = struct.unpack(">I", message[:4])
            header = json.loads(message[4 : 4 + length])
            socket.send(json.dumps({"type": "ack", "frame": header["frame"]}))
            return header, Image.open(io.BytesIO(message[4 + length :]))


def next_text(socket, timeout=10):
    while True:
        message = socket.recv(timeout=timeout)
        if isinstance(message, str):
            return json.loads(message)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def archived_phantom(tenants, tmp_path):
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in phantom.datasets()]
    return Series.objects.get(pk=instances[0].series_id)


def test_a_reader_rotates_and_the_session_ends_when_idle(archived_phantom, tenants, live_url, settings):
    series, reader = archived_phantom, tenants.a.radiologist
    with open_socket(live_url, reader, series) as socket:
        ready = next_text(socket)
        assert ready["type"] == "ready" and "bone" in ready["presets"] and "mip" in ready["presets"]
        assert ready["shape"] == list(phantom.SHAPE)
        socket.send(json.dumps({"type": "size", "width": 512, "height": 512}))
        header, first = next_frame(socket)
        while header["width"] != 512:
            header, first = next_frame(socket)
        assert header["quality"] == "full" and first.size == (512, 512) and first.format == "JPEG"
        # Dragging: smaller, faster frames; on release the full-quality one.
        for _ in range(4):
            socket.send(json.dumps({"type": "rotate", "dx": 30, "dy": 0}))
        header, dragged = next_frame(socket)
        for _ in range(3):  # full frames already under way when the drag began
            if header["quality"] == "interactive":
                break
            header, dragged = next_frame(socket)
        assert header["quality"] == "interactive" and max(dragged.size) == 320
        socket.send(json.dumps({"type": "release"}))
        while header["quality"] != "full":
            header, released = next_frame(socket)
        assert released.size == (512, 512)
        assert np.abs(np.asarray(released, float) - np.asarray(first, float)).mean() > 1  # it turned
        # A bad gesture is answered and changes nothing.
        socket.send(json.dumps({"type": "preset", "name": "rainbow"}))
        assert next_text(socket)["status"] == 400
        session = sessions.open_sessions()[0]
        assert session.user_id == reader.pk and session.transfer.name == "bone"
        event = AuditEvent.objects.get(action="viewer.volume.open")
        assert event.actor_id == reader.pk and event.object_id == str(series.study_id)
        # Idle: the session closes and its memory returns to the budget.
        volume_bytes = mpr.series_volume(series).nbytes
        assert caches.decoded_cache().size_bytes == volume_bytes + session.nbytes
        settings.VIEWER_3D_IDLE_SECONDS = 0.3
        assert wait_for(lambda: not sessions.open_sessions())
        assert session.closed and session.scene is None and session.volume is None
        assert caches.decoded_cache().size_bytes == volume_bytes
        socket.send(json.dumps({"type": "rotate", "dx": 5, "dy": 0}))
        assert next_text(socket)["type"] == "closed"
    settings.VIEWER_3D_IDLE_SECONDS = 300
    # Closing the page ends its session at once.
    with open_socket(live_url, reader, series) as socket:
        next_text(socket)
        assert len(sessions.open_sessions()) == 1
    assert wait_for(lambda: not sessions.open_sessions())


def test_another_hospitals_reader_gets_404_and_no_session(tenants, live_url, tmp_path):
    datasets, _ = ct_datasets(size=16, slices=3)
    instances = [store(ds, tenants.a.institution, tmp_path) for ds in datasets]
    series = Series.objects.get(pk=instances[0].series_id)
    page = f"/viewer/series/{series.pk}/3d/"
    assert web_client(tenants.a.clinician).get(page).status_code == 200
    assert web_client(tenants.c.radiologist).get(page).status_code == 404
    missing = "/viewer/series/00000000-0000-0000-0000-000000000000/3d/"
    assert web_client(tenants.a.clinician).get(missing).status_code == 404
    with open_socket(live_url, tenants.c.radiologist, series) as socket:
        assert next_text(socket) == {"type": "error", "status": 404, "detail": "Not found"}
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=5)
    assert closed.value.rcvd.code == 4404
    assert not sessions.open_sessions()
    assert not AuditEvent.objects.filter(action="viewer.volume.open").exists()
    assert AuditEvent.objects.filter(action="viewer.volume.open_refused", actor_id=tenants.c.radiologist.pk).exists()


def test_a_large_volume_shows_its_half_resolution_preview_first_and_while_dragging(
    archived_phantom, tenants, live_url, settings
):
    settings.VIEWER_3D_PREVIEW_MIN_VOXELS = 0  # the phantom counts as large
    with open_socket(live_url, tenants.a.radiologist, archived_phantom) as socket:
        assert next_text(socket)["type"] == "ready"
        header, preview = next_frame(socket)
        assert (header["quality"], header["reduced"]) == ("preview", 2)
        header, full = next_frame(socket)
        assert (header["quality"], header["reduced"]) == ("full", 1) and full.size == preview.size
        # The same object at half the resolution and without shading: where the full picture shows
        # something, so does the preview.
        seen_full = np.asarray(full.convert("L")) > 40
        seen_preview = np.asarray(preview.convert("L")) > 40
        assert seen_full.sum() > 500
        assert (seen_full & seen_preview).sum() / seen_full.sum() > 0.8
        assert (seen_preview & ~seen_full).sum() / seen_preview.sum() < 0.2
        socket.send(json.dumps({"type": "rotate", "dx": 30, "dy": 0}))
        while header["quality"] != "interactive":
            header, _ = next_frame(socket)
        assert header["reduced"] == 2
        socket.send(json.dumps({"type": "release"}))
        while header["quality"] != "full":
            header, _ = next_frame(socket)
        assert header["reduced"] == 1
        session = sessions.open_sessions()[0]
        assert session.preview is not None and session.preview.volume is session.volume
        assert session.nbytes == session.scene.working_bytes + session.preview.working_bytes
    assert wait_for(lambda: not sessions.open_sessions())


def test_dragging_frames_keep_coming_while_the_full_scene_prepares_its_first_frame(
    archived_phantom, tenants, live_url, settings, monkeypatch
):
    from viewer.volume import scene as scene_module

    settings.VIEWER_3D_PREVIEW_MIN_VOXELS = 0
    original = scene_module.VolumeScene.render
    slow = {"first": True}

    def render(self, width, height, *, interactive=False, flat=False):
        if self.reduce == 1 and slow["first"]:
            slow["first"] = False
            time.sleep(3)  # the full scene's first frame: VTK's gradients over every voxel take seconds
        return original(self, width, height, interactive=interactive, flat=flat)

    monkeypatch.setattr(scene_module.VolumeScene, "render", render)
    with open_socket(live_url, tenants.a.radiologist, archived_phantom) as socket:
        assert next_text(socket)["type"] == "ready"
        header, _ = next_frame(socket)
        assert header["quality"] == "preview"
        started = time.monotonic()
        for _ in range(3):
            socket.send(json.dumps({"type": "rotate", "dx": 20, "dy": 0}))
            header, _ = next_frame(socket)
            assert header["quality"] == "interactive"
        assert time.monotonic() - started < 2.5  # not held behind the full frame in preparation
        socket.send(json.dumps({"type": "release"}))
        while header["quality"] != "full":
            header, _ = next_frame(socket)
        assert header["reduced"] == 1
