"""Render sessions: one per open 3D viewer, holding its scene until the page closes or goes idle.

A session belongs to the user who opened it and is looked up by its id *and*
that user, so one reader's session can never answer another's. Its decoded
volume is the series volume of the 2D/MPR cache (``viewer.caches``), and the
memory VTK adds on top (gradients, the frame buffer) is an entry of the same
byte-bounded LRU: when the budget is exceeded the least recently used
session is closed like any other cached volume, and its viewer reopens it.

A large volume also gets a preview scene over every second voxel along each
axis (an eighth of the voxels): it draws the first picture (without shading,
which needs gradients of every voxel computed first) while the full
scene prepares (VTK's gradients for shading over every voxel take most of the
first full frame), and every frame while the user drags; the full scene draws
the frames on release.

Every VTK call runs on one of two render threads per process, each scene
always on the same one (OpenGL contexts belong to a thread): the full scenes
of large volumes on the *full* thread, where the first frame's preparation
takes seconds, and everything else (previews, small volumes) on the *quick*
thread, so dragging keeps its frames while a full scene prepares. Each
viewer keeps at most one quick frame in flight, so concurrent viewers take
turns and each sees fewer frames instead of failing.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from django.conf import settings

from ..caches import decoded_cache
from ..mpr import Volume
from .presets import Clipping, TransferFunction, preset
from .scene import Camera, VolumeScene

T = TypeVar("T")

_full_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volume-full")
_quick_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volume-quick")


@dataclass(eq=False)
class RenderSession:
    id: str
    user_id: Any
    study_id: Any
    series_id: Any
    volume: Volume | None
    scene: VolumeScene | None = None
    preview: VolumeScene | None = None
    camera: Camera | None = None
    transfer: TransferFunction = field(default_factory=lambda: preset("bone"))
    clipping: Clipping = field(default_factory=Clipping)
    budget: int = 0  # bytes counted in the decoded-volume LRU, fixed when the session opens
    last_used: float = field(default_factory=time.monotonic)
    frames: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        """What the session adds to the memory budget (the volume itself is its own cache entry)."""
        return self.budget

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def run(self, fn: Callable[[], T], *, full: bool) -> Future[T]:
        """Run ``fn`` on the thread of the scene it uses: the full scene's (``full``) or the preview's."""
        return (_full_pool if full and self.preview is not None else _quick_pool).submit(fn)

    def evicted(self) -> None:
        """Called by the LRU when the memory budget needs this session's bytes."""
        close(self.id)

    def render(
        self, width: int, height: int, *, interactive: bool, preview: bool = False, flat: bool = False
    ) -> np.ndarray:
        """A frame of the current state; runs on the render thread.

        Interactive frames, and any frame asked as a ``preview``, come from the
        preview scene when there is one; a ``flat`` one without shading.
        """
        if self.closed or self.scene is None:
            raise SessionClosed(self.id)
        with self.lock:
            camera = (
                Camera(
                    self.camera.focal.copy(), self.camera.direction.copy(), self.camera.up.copy(), self.camera.height_mm
                )
                if self.camera is not None
                else self.scene.view("anterior")
            )
            transfer, clipping = self.transfer, self.clipping
        scene = self.preview if (interactive or preview) and self.preview is not None else self.scene
        scene.camera = camera
        if scene.transfer != transfer:
            scene.set_transfer(transfer)
        if scene.clipping != clipping:
            scene.set_clipping(clipping)
        self.frames += 1
        return scene.render(width, height, interactive=interactive, flat=flat)

    def parameters(self) -> dict[str, Any]:
        """Everything that decides the picture: stored with a snapshot so it can be reproduced."""
        with self.lock:
            return {
                "transfer": self.transfer.describe(),
                "clipping": self.clipping.describe(),
                "camera": self.camera.describe() if self.camera is not None else None,
            }


class SessionClosed(Exception):
    pass


_sessions: dict[str, RenderSession] = {}
_lock = threading.Lock()
_reaper: threading.Thread | None = None


def _budget_key(session_id: str) -> tuple[str, str]:
    return ("volume-session", session_id)


def open_session(*, user: Any, study_id: Any, series_id: Any, volume: Volume) -> RenderSession:
    """A new session over ``volume`` for ``user``; the caller has checked access and audited the start."""
    session = RenderSession(
        id=secrets.token_urlsafe(18), user_id=user.pk, study_id=study_id, series_id=series_id, volume=volume
    )

    def build() -> None:
        session.scene = VolumeScene(volume)
        session.camera = session.scene.view("anterior")
        session.budget = session.scene.working_bytes
        if volume.data.size >= settings.VIEWER_3D_PREVIEW_MIN_VOXELS:
            session.preview = VolumeScene(volume, reduce=2)
            session.budget += session.preview.working_bytes

    _quick_pool.submit(build).result()  # no OpenGL yet: each scene makes its context where it renders
    with _lock:
        _sessions[session.id] = session
    decoded_cache().put(_budget_key(session.id), session)
    _start_reaper()
    return session


def get_session(session_id: str, user: Any) -> RenderSession | None:
    """The caller's own open session with this id; another user's id finds nothing."""
    with _lock:
        session = _sessions.get(session_id)
    if session is None or session.closed or session.user_id != getattr(user, "pk", None):
        return None
    session.touch()
    decoded_cache().get(_budget_key(session_id))  # most recently used
    return session


def close(session_id: str) -> None:
    """End a session and free what it holds (idempotent; safe from any thread)."""
    with _lock:
        session = _sessions.pop(session_id, None)
    if session is None or session.closed:
        return
    session.closed = True
    decoded_cache().discard(_budget_key(session_id))
    full, preview = session.scene, session.preview
    if full is not None:
        session.run(full.close, full=True)
    if preview is not None:
        session.run(preview.close, full=False)
    session.scene = session.preview = None
    session.volume = None


def settled() -> None:
    """Wait until both render threads have run everything queued before this call."""
    for pool in (_full_pool, _quick_pool):
        pool.submit(lambda: None).result()


def open_sessions() -> list[RenderSession]:
    with _lock:
        return list(_sessions.values())


def expire_idle(now: float | None = None) -> int:
    """Close sessions idle longer than ``VIEWER_3D_IDLE_SECONDS``; returns how many."""
    now = time.monotonic() if now is None else now
    limit = settings.VIEWER_3D_IDLE_SECONDS
    idle = [s.id for s in open_sessions() if now - s.last_used > limit]
    for session_id in idle:
        close(session_id)
    return len(idle)


def _reap() -> None:
    while True:
        # At least once a second, so a shorter idle limit takes effect without a restart.
        time.sleep(max(0.1, min(1.0, settings.VIEWER_3D_IDLE_SECONDS / 4)))
        expire_idle()


def _start_reaper() -> None:
    global _reaper
    with _lock:
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(target=_reap, name="volume-session-reaper", daemon=True)
            _reaper.start()


def pick(session: RenderSession, x: float, y: float, aspect: float) -> list[float] | None:
    """The volume-frame point (mm) under the fraction (``x``, ``y``) of the 3D picture, or None.

    Follows the ray the renderer cast there: the first place where the
    opacity seen so far passes one half (composite), or the brightest /
    darkest sample (MIP / MinIP).
    """
    from .presets import COMPOSITE, MIP
    from .reslice import extent, sample, spacing

    volume = session.volume
    if volume is None or session.camera is None:
        return None
    with session.lock:
        camera = session.camera
        focal, direction, up, right = camera.focal.copy(), camera.direction.copy(), camera.up.copy(), camera.right
        height_mm, transfer = camera.height_mm, session.transfer
    origin = focal + right * (x - 0.5) * height_mm * aspect - up * (y - 0.5) * height_mm
    step = float(spacing(volume).min())
    reach = float(np.linalg.norm(extent(volume)))
    t = np.arange(-reach, reach, step)
    points = origin + t[:, None] * direction
    size = extent(volume)
    inside = np.all((points >= 0) & (points <= size), axis=1)
    if not inside.any():
        return None
    points = points[inside]
    values = sample(volume, points)
    if transfer.blend == COMPOSITE:
        hu, alpha = zip(*transfer.opacity_points(), strict=True)
        opacity = np.clip(np.interp(values, hu, alpha), 0, 1)
        seen = 1 - np.cumprod(1 - opacity * min(step, 1.0))
        hits = np.nonzero(seen > 0.5)[0]
        if not len(hits):
            return None
        index = int(hits[0])
    else:
        index = int(np.argmax(values) if transfer.blend == MIP else np.argmin(values))
    return [round(float(v), 3) for v in points[index]]
