"""Routes of DCE-MRI analysis."""

from django.urls import path

from . import api

urlpatterns = [
    path("api/v1/analysis/dce/curve-fit/", api.CurveFit.as_view(), name="viewer-fit-dce-curve"),
    path("api/v1/analysis/dce/enhancement/", api.EnhancementCurve.as_view(), name="viewer-describe-dce-curve"),
]
