"""Routes of DCE-MRI analysis."""

from django.urls import path

from . import api, views

urlpatterns = [
    path("viewer/studies/<uuid:study_id>/dce/", views.dce_page, name="viewer-analyse-dce"),
    path("api/v1/analysis/dce/curve-fit/", api.CurveFit.as_view(), name="viewer-fit-dce-curve"),
    path("api/v1/analysis/dce/", api.MapJobList.as_view(), name="viewer-start-dce-maps"),
    path("api/v1/analysis/dce/<uuid:job_id>/", api.MapJobDetail.as_view(), name="viewer-read-dce-maps"),
    path("api/v1/analysis/dce/<uuid:job_id>/cancel/", api.MapJobCancel.as_view(), name="viewer-cancel-dce-maps"),
    path("api/v1/analysis/dce/regions/", api.RegionList.as_view(), name="viewer-analyse-dce-region"),
    path(
        "api/v1/analysis/dce/regions/<uuid:region_id>/key-image/",
        api.RegionKeyImage.as_view(),
        name="viewer-save-dce-curve",
    ),
    path(
        "api/v1/analysis/dce/<uuid:job_id>/maps/<str:name>/<int:index>/",
        api.MapSlice.as_view(),
        name="viewer-read-dce-map-slice",
    ),
    path("api/v1/analysis/parametric-maps/", api.ParametricMapList.as_view(), name="viewer-list-parametric-maps"),
    path(
        "api/v1/analysis/parametric-maps/<uuid:map_id>/values/",
        api.ParametricMapValues.as_view(),
        name="viewer-read-parametric-map-values",
    ),
    path("api/v1/analysis/dce/enhancement/", api.EnhancementCurve.as_view(), name="viewer-describe-dce-curve"),
]
