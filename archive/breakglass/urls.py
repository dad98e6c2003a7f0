from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, views

router = SimpleRouter()
router.register("api/v1/break-glass", api.BreakGlassViewSet, basename="archive-break-glass")

urlpatterns = [
    path("break-glass/", views.request_access, name="archive-request-break-glass"),
    path("break-glass/review/", views.review, name="archive-review-break-glass"),
    *router.urls,
]
