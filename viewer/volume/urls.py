"""Routes of the 3D viewer (its WebSocket is in ``routing``)."""

from django.urls import path

from . import api, views

_SERIES = "api/v1/viewer/series/<uuid:series_id>/volume"

urlpatterns = [
    path("viewer/series/<uuid:series_id>/3d/", views.open_volume, name="viewer-open-volume"),
    path(f"{_SERIES}/oblique/", api.ObliqueImage.as_view(), name="viewer-render-oblique"),
    path(f"{_SERIES}/curved/", api.CurvedImage.as_view(), name="viewer-render-curved"),
    path(f"{_SERIES}/measurements/", api.Measurement.as_view(), name="viewer-measure-volume"),
    path(f"{_SERIES}/snapshots/", api.Snapshot.as_view(), name="viewer-save-snapshot"),
]
