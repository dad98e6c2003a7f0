"""WebSocket routes of the 3D viewer (named in the settings' ``WEBSOCKET_ROUTES``)."""

from django.urls import path

from .consumers import VolumeConsumer

websocket_urlpatterns = [
    path("ws/viewer/volume/<uuid:series_id>/", VolumeConsumer.as_asgi()),
]
