"""ASGI entry point: HTTP (Django) and WebSockets (channels) on one server."""

import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from . import push  # noqa: E402
from .cors import cors_http  # noqa: E402
from .routing import websocket_urlpatterns  # noqa: E402

push.IN_WEB_PROCESS = True

# Bearer-token reads skip the browser middleware: each app that serves such
# reads names its wrapper in LEAN_HTTP_WRAPPERS (innermost first).
http_application: Any = django_asgi_app
for dotted in settings.LEAN_HTTP_WRAPPERS:
    http_application = import_string(dotted)(http_application)
# Cross-origin clients (CORS_ALLOWED_ORIGINS) on every path, lean or full.
http_application = cors_http(http_application)

application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Everything loaded so far (code, settings, URL patterns) lives as long as the
# process: leave it out of the collector's full passes, which otherwise walk it
# in the middle of requests.
gc.freeze()
