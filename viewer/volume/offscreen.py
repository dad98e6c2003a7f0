"""VTK off-screen rendering without a display or a GPU.

The PyPI ``vtk`` wheel picks its OpenGL window class at run time. On a server
there is no X display, so we ask for EGL (Mesa's ``libegl-mesa0`` with the
software ``llvmpipe`` driver from ``libgl1-mesa-dri``) before VTK loads, and
fall back to OSMesa (``libosmesa6``) where EGL cannot make a context.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_BACKENDS = ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow")
_lock = threading.Lock()
_chosen: str | None = None


def _try(backend: str) -> bool:
    import vtkmodules.vtkRenderingCore as core

    window = core.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(8, 8)
    if type(window).__name__ != backend:
        return False
    try:
        window.Render()
        return bool(window.IsCurrent() or window.GetGenericContext())
    finally:
        window.Finalize()


def backend() -> str:
    """The window class in use (probing once per process)."""
    global _chosen
    with _lock:
        if _chosen is None:
            for name in _BACKENDS:
                os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = name
                # Mesa's software rasteriser, never a GPU driver that might not be there.
                os.environ.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")
                os.environ.setdefault("EGL_PLATFORM", "surfaceless")
                import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  registers the window classes

                if _try(name):
                    _chosen = name
                    break
            else:
                raise RuntimeError("no off-screen OpenGL: install Mesa's EGL (libegl-mesa0) or OSMesa (libosmesa6)")
        return _chosen


def render_window(width: int, height: int) -> Any:
    """A new off-screen render window of the chosen backend."""
    backend()
    import vtkmodules.vtkRenderingCore as core

    window = core.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    window.SetMultiSamples(0)
    return window
