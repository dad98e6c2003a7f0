"""The 3D viewer's WebSocket, ``/ws/viewer/volume/<series id>/``: gestures in, pictures out.

The browser sends only gestures (JSON text messages); the server answers
with frames, each a binary message: a 4-byte big-endian header length, a
JSON header (frame number, quality, size, media type, render time) and the
JPEG or WebP bytes. While the user drags, frames are interactive (smaller,
coarser sampling, as fast as the render thread allows); on release the
full-quality frame follows.

Flow control: at most two frames travel unacknowledged; gestures that
arrive meanwhile are merged into the next frame, so a slow link or a busy
server shows fewer frames, never a growing queue. The JPEG quality of
interactive frames follows the link: it drops when a frame takes long to be
acknowledged or grows past ``TARGET_FRAME_BYTES``, and climbs back when the
link keeps up.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any

import numpy as np
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import Http404

from archive.models import Series

from .. import mpr
from ..pixels import RenderError
from . import access, sessions
from .actions import do_save_snapshot
from .api import snapshot_json
from .presets import PRESETS, Clipping, edited, preset
from .scene import MAX_SIZE, VIEWS, encode_frame

INTERACTIVE_LONG_SIDE = 320
TARGET_FRAME_BYTES = 30_000
FULL_QUALITY = 90
MAX_IN_FLIGHT = 2
DEGREES_PER_PIXEL = 0.5


class VolumeConsumer(AsyncWebsocketConsumer):
    # Frames go to this one socket and nothing is pushed to it from elsewhere: no channel
    # layer (an alias that names none), so an open 3D viewer holds no Redis reader.
    channel_layer_alias = "volume-3d:none"
    session: sessions.RenderSession | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        series_id = self.scope["url_route"]["kwargs"]["series_id"]
        await self.accept()
        try:
            self.session = await self._open(user, series_id)
        except Http404:
            await self.send(text_data=json.dumps({"type": "error", "status": 404, "detail": "Not found"}))
            await self.close(code=4404)
            return
        except RenderError as exc:
            await self.send(text_data=json.dumps({"type": "error", "status": exc.status, "detail": str(exc)}))
            await self.close(code=4422)
            return
        self.width, self.height = 512, 512
        self.media = "image/jpeg"
        self.quality = 70
        self.dragging = False
        self.dirty = True
        self.full_owed = True
        # A large volume shows its preview scene's picture first, while the full scene prepares.
        self.preview_owed = self.session.preview is not None
        # The full-quality frame renders on its own thread; dragging frames go on meanwhile.
        self.full_task: asyncio.Task[None] | None = None
        self.changes = 0  # gestures that changed the picture, so a full frame overtaken by a drag is dropped
        self.sent: dict[int, tuple[float, int]] = {}
        self.wake = asyncio.Event()
        self.wake.set()
        self.pump = asyncio.create_task(self._pump())
        session = self.session
        scene = session.scene
        assert scene is not None
        await self.send(
            text_data=json.dumps(
                {
                    "type": "ready",
                    "session": session.id,
                    "presets": list(PRESETS),
                    "views": list(VIEWS),
                    "parameters": session.parameters(),
                    "extent_mm": [round(float(v), 3) for v in scene.extent_mm],
                    "spacing": [round(float(v), 4) for v in scene.spacing],
                    "shape": list(scene.volume.data.shape),
                }
            )
        )

    @database_sync_to_async
    def _open(self, user: Any, series_id: object) -> sessions.RenderSession:
        address = (self.scope.get("client") or ("", 0))[0] or ""
        try:
            series = access.access_volume_series(user, series_id)
        except Http404:
            access.record_session_refused(user, series_id, address=address)
            raise
        volume = mpr.series_volume(series)
        session = sessions.open_session(user=user, study_id=series.study_id, series_id=series.pk, volume=volume)
        access.record_session_start(user, series, session.id, address=address)
        return session

    async def disconnect(self, code: int) -> None:
        for task in (getattr(self, "pump", None), getattr(self, "full_task", None)):
            if task is not None:
                task.cancel()
        if self.session is not None:
            sessions.close(self.session.id)
            self.session = None

    # Gestures --------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        session = self.session
        if session is None or text_data is None:
            return
        if session.closed:
            await self.send(text_data=json.dumps({"type": "closed", "detail": "the session ended; reopen 3D"}))
            await self.close(code=4410)
            return
        try:
            message = json.loads(text_data)
            kind = message.get("type")
            if kind == "ack":
                self._acknowledged(int(message.get("frame", 0)))
            elif kind == "pick":
                await self._pick(session, float(message["x"]), float(message["y"]))
            elif kind == "snapshot":
                await self._snapshot(session, str(message.get("note") or "")[:200])
            else:
                self._apply(session, kind, message)
                if kind in ("preset", "transfer", "release"):
                    # What the page's transfer function editor shows (a window drag moves it too).
                    await self.send(text_data=json.dumps({"type": "transfer", "transfer": session.transfer.describe()}))
        except (ValueError, TypeError, AttributeError, RenderError) as exc:
            await self.send(text_data=json.dumps({"type": "error", "status": 400, "detail": str(exc)}))
            return
        session.touch()
        self.wake.set()

    def _apply(self, session: sessions.RenderSession, kind: str, message: dict[str, Any]) -> None:
        with session.lock:
            camera = session.camera
            assert camera is not None
            if kind == "rotate":
                camera.rotate(
                    float(message.get("dx", 0)) * DEGREES_PER_PIXEL, float(message.get("dy", 0)) * DEGREES_PER_PIXEL
                )
            elif kind == "zoom":
                camera.zoom(min(max(float(message["factor"]), 0.2), 5.0))
            elif kind == "pan":
                camera.pan(float(message.get("dx", 0)), float(message.get("dy", 0)))
            elif kind == "roll":
                camera.roll(float(message.get("degrees", 0)))
            elif kind == "window":
                session.transfer = session.transfer.windowed(
                    shift=float(message.get("shift", 0)), scale=float(message.get("scale", 1))
                )
            elif kind == "preset":
                session.transfer = preset(str(message.get("name")))
            elif kind == "transfer":
                session.transfer = edited(session.transfer, dict(message.get("changes") or {}))
            elif kind == "clip":
                session.clipping = Clipping.parse(dict(message.get("clipping") or {}))
            elif kind == "view":
                if message.get("name") not in VIEWS:
                    raise RenderError(f"view must be one of {', '.join(VIEWS)}")
                assert session.scene is not None
                session.camera = session.scene.view(message["name"])
            elif kind == "size":
                self.width = max(64, min(int(message["width"]), MAX_SIZE))
                self.height = max(64, min(int(message["height"]), MAX_SIZE))
                if message.get("media") in ("image/jpeg", "image/webp"):
                    self.media = message["media"]
            elif kind == "centre":
                point = np.array([float(v) for v in message["point"]], dtype=float)
                if point.shape != (3,) or not np.all(np.isfinite(point)):
                    raise RenderError("the centre is three numbers (mm)")
                camera.focal = point
            elif kind == "release":
                self.dragging = False
                self.full_owed = True
                self.dirty = True
                return
            else:
                raise RenderError(f"unknown message type {kind!r}")
        self.changes += 1
        self.dragging = bool(message.get("dragging", kind in ("rotate", "pan", "zoom", "roll", "window")))
        if not self.dragging:
            self.full_owed = True
        self.dirty = True

    async def _pick(self, session: sessions.RenderSession, x: float, y: float) -> None:
        """A click on the 3D picture: the point under it becomes the 3D cursor, and the view centres on it."""
        point = await asyncio.to_thread(sessions.pick, session, x, y, self.width / self.height)
        if point is None:
            return
        with session.lock:
            assert session.camera is not None
            session.camera.focal = np.array(point)
        self.changes += 1
        self.full_owed = self.dirty = True
        await self.send(text_data=json.dumps({"type": "cursor", "point": point}))

    async def _snapshot(self, session: sessions.RenderSession, note: str) -> None:
        """Save the current 3D view at full quality into the study as a key image (Secondary Capture)."""
        width, height = self.width, self.height
        picture = await asyncio.wrap_future(
            session.run(lambda: session.render(width, height, interactive=False), full=True)
        )
        with session.lock:
            assert session.camera is not None and session.scene is not None
            axes = session.scene.axes
            right, down = axes.T @ session.camera.right, axes.T @ -session.camera.up
        parameters = session.parameters()
        key_image = await self._save(session, picture, parameters, right, down, note or f"3D {session.transfer.name}")
        await self.send(text_data=json.dumps({"type": "snapshot", **key_image}))

    @database_sync_to_async
    def _save(
        self, session: sessions.RenderSession, picture: Any, parameters: Any, right: Any, down: Any, note: str
    ) -> dict[str, Any]:
        series = Series.objects.select_related("study__patient", "study__institution").get(pk=session.series_id)
        key_image = do_save_snapshot(
            acting_user=self.scope["user"],
            series=series,
            picture=picture,
            parameters={"kind": "3d", **parameters},
            right=right,
            down=down,
            description=note,
        )
        return snapshot_json(key_image)

    def _acknowledged(self, frame: int) -> None:
        sent = self.sent.pop(frame, None)
        for older in [n for n in self.sent if n < frame]:
            self.sent.pop(older)
        if sent is None:
            return
        round_trip, size = time.monotonic() - sent[0], sent[1]
        if round_trip > 0.25 or size > TARGET_FRAME_BYTES:
            self.quality = max(30, self.quality - 10)
        elif round_trip < 0.08 and size < TARGET_FRAME_BYTES * 0.7:
            self.quality = min(80, self.quality + 5)
        self.wake.set()

    # Frames ----------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            session = self.session
            if session is None or session.closed:
                return
            if len(self.sent) >= MAX_IN_FLIGHT:
                # Wait for an acknowledgement, but not for ever: a lost one must not freeze the view.
                oldest = min(t for t, _ in self.sent.values())
                if time.monotonic() - oldest < 2.0:
                    asyncio.get_running_loop().call_later(0.1, self.wake.set)
                    continue
                self.sent.clear()
            if self.preview_owed:
                self.preview_owed = False
                await self._send_frame(session, interactive=False, preview=True)
            elif self.dirty and self.dragging:
                self.dirty = False
                await self._send_frame(session, interactive=True)
            elif (self.dirty or self.full_owed) and self.full_task is None:
                self.dirty = self.full_owed = False
                self.full_task = asyncio.create_task(self._full_frame(session))
            if (
                self.preview_owed
                or (self.dirty and self.dragging)
                or ((self.dirty or self.full_owed) and self.full_task is None)
            ):
                self.wake.set()

    async def _full_frame(self, session: sessions.RenderSession) -> None:
        try:
            await self._send_frame(session, interactive=False, since=self.changes)
        finally:
            self.full_task = None
            self.wake.set()

    async def _send_frame(
        self, session: sessions.RenderSession, *, interactive: bool, preview: bool = False, since: int | None = None
    ) -> None:
        width, height = self.width, self.height
        if interactive and max(width, height) > INTERACTIVE_LONG_SIDE:
            scale = INTERACTIVE_LONG_SIDE / max(width, height)
            width, height = max(64, round(width * scale)), max(64, round(height * scale))
        quality = self.quality if interactive else FULL_QUALITY
        media = self.media

        def produce() -> tuple[bytes, float]:
            started = time.perf_counter()
            picture = session.render(width, height, interactive=interactive, preview=preview, flat=preview)
            return encode_frame(picture, media, quality), (time.perf_counter() - started) * 1000

        try:
            data, render_ms = await asyncio.wrap_future(session.run(produce, full=not (interactive or preview)))
        except sessions.SessionClosed:
            await self.send(text_data=json.dumps({"type": "closed", "detail": "the session ended; reopen 3D"}))
            await self.close(code=4410)
            return
        if since is not None and since != self.changes and self.dragging:
            return  # overtaken by a drag: its release asks for a new full frame
        number = session.frames
        header = json.dumps(
            {
                "frame": number,
                "quality": "interactive" if interactive else "preview" if preview else "full",
                # Every voxel (1) or every second one along each axis (2): the scene the frame came from.
                "reduced": 2 if (interactive or preview) and session.preview is not None else 1,
                "width": width,
                "height": height,
                "media": media,
                "jpeg_quality": quality,
                "ms": round(render_ms, 1),
            }
        ).encode()
        self.sent[number] = (time.monotonic(), len(data))
        await self.send(bytes_data=struct.pack(">I", len(header)) + header + data)
