"""ASGI entry point: HTTP (Django) and WebSockets (channels) on one server."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from . import push  # noqa: E402
from .lean import LeanHandler, takes_lean_path  # noqa: E402
from .routing import websocket_urlpatterns  # noqa: E402

push.IN_WEB_PROCESS = True

lean_app = LeanHandler()


async def http_app(scope: dict, receive: Any, send: Any) -> None:
    """Bearer-token reads of the views that ask for it skip the browser middleware (see ``lean``)."""
    app = lean_app if takes_lean_path(scope) else django_asgi_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
