"""Server-side 3D: volume rendering, oblique and curved MPR, measurements, streamed to the browser.

The server renders on its CPUs with VTK (off-screen, software OpenGL) and only
pictures travel; the browser sends gestures over a WebSocket.
"""
