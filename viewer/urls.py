"""Viewer routes: the study page, its API, MPR images, and DICOMweb rendered/thumbnail resources."""

from django.urls import include, path

from pacs_cloud.restapi import Router

from . import compare, views
from .hanging import api as hanging_api

router = Router()
router.register("api/v1/hanging-protocols", hanging_api.HangingProtocolViewSet, basename="viewer-hanging-protocol")

_INSTANCE = "dicomweb/studies/<str:study_uid>/series/<str:series_uid>/instances/<str:instance_uid>"

urlpatterns = [
    # 3D: volume rendering, oblique and curved MPR, measurements (viewer/volume/)
    path("", include("viewer.volume.urls")),
    path("viewer/studies/<uuid:study_id>/", views.open_study, name="viewer-open-study"),
    path("viewer/studies/<uuid:study_id>/compare/", compare.compare_study, name="viewer-compare-study"),
    path("api/v1/viewer/studies/<uuid:study_id>/", views.StudyManifest.as_view(), name="viewer-api-study"),
    path(
        "api/v1/viewer/studies/<uuid:study_id>/key-images/",
        views.KeyImageList.as_view(),
        name="viewer-list-key-images",
    ),
    path(
        "api/v1/viewer/key-images/<uuid:key_image_id>/",
        views.KeyImageDetail.as_view(),
        name="viewer-delete-key-image",
    ),
    path(
        "api/v1/viewer/series/<uuid:series_id>/mpr/<str:plane>/<int:index>/",
        views.MprImage.as_view(),
        name="viewer-render-mpr",
    ),
    # DICOMweb rendered resources (PS3.18 10.4) and thumbnails (PS3.18 10.5)
    path("dicomweb/studies/<str:study_uid>/rendered", views.StudyRendered.as_view(), name="viewer-render-study"),
    path("dicomweb/studies/<str:study_uid>/thumbnail", views.StudyThumbnail.as_view(), name="viewer-thumbnail-study"),
    path(
        "dicomweb/studies/<str:study_uid>/series/<str:series_uid>/rendered",
        views.SeriesRendered.as_view(),
        name="viewer-render-series",
    ),
    path(
        "dicomweb/studies/<str:study_uid>/series/<str:series_uid>/thumbnail",
        views.SeriesThumbnail.as_view(),
        name="viewer-thumbnail-series",
    ),
    path(f"{_INSTANCE}/rendered", views.InstanceRendered.as_view(), name="viewer-render-instance"),
    path(f"{_INSTANCE}/thumbnail", views.InstanceThumbnail.as_view(), name="viewer-thumbnail-instance"),
    path(f"{_INSTANCE}/frames/<str:frames>/rendered", views.FrameRendered.as_view(), name="viewer-render-frames"),
    path(f"{_INSTANCE}/frames/<str:frames>/thumbnail", views.FrameThumbnail.as_view(), name="viewer-thumbnail-frames"),
    # OHIF v3 at /ohif/ (viewer/ohif/).
    path("", include("viewer.ohif.urls")),
    *router.urls,
    # DCE-MRI analysis (viewer/analysis/): its pages and /api/v1/analysis/dce/.
    path("", include("viewer.analysis.urls")),
]
