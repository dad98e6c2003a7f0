"""Report routes: the lookup and report pages, the editor, and the REST API."""

from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("api/v1/reports", api.ReportViewSet, basename="reports-report")
router.register("api/v1/report-templates", api.ReportTemplateViewSet, basename="reports-template")
router.register("api/v1/critical-results", api.CriticalResultViewSet, basename="reports-critical-result")

urlpatterns: list = [
    *router.urls,
]
