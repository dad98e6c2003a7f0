"""ASGI entry point: HTTP (Django) and WebSockets (channels) on one server."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from . import push  # noqa: E402
from .lean import bearer_reads  # noqa: E402
from .routing import websocket_urlpatterns  # noqa: E402

push.IN_WEB_PROCESS = True

application = ProtocolTypeRouter(
    {
        # Bearer-token reads of the views that ask for it skip the browser middleware (see .lean).
        "http": bearer_reads(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
