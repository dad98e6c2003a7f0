"""WebSocket routes of every app: our own, then each list the settings' ``WEBSOCKET_ROUTES`` names."""

from django.conf import settings
from django.urls import path
from django.utils.module_loading import import_string

from .consumers import NotificationConsumer

websocket_urlpatterns = [
    path("ws/notifications/", NotificationConsumer.as_asgi()),
]
for dotted in settings.WEBSOCKET_ROUTES:
    websocket_urlpatterns += import_string(dotted)
