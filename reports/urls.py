"""Report routes: the lookup and report pages, the editor, and the REST API."""

from django.urls import path

from pacs_cloud.restapi import Router

from . import api, priors, views
from .exit import api as exit_api
from .exit import pages as exit_pages

router = Router()
router.register("api/v1/reports", api.ReportViewSet, basename="reports-report")
router.register("api/v1/report-templates", api.ReportTemplateViewSet, basename="reports-template")
router.register("api/v1/critical-results", api.CriticalResultViewSet, basename="reports-critical-result")
router.register("api/v1/exits", exit_api.ExitJobViewSet, basename="reports-exit")

urlpatterns: list = [
    path("reports/", views.lookup_page, name="reports-search-reports"),
    path("reports/<uuid:report_id>/", views.report_page, name="reports-view-report"),
    path("reports/<uuid:report_id>/edit/", views.editor, name="reports-edit-report"),
    path("reports/<uuid:report_id>/addendum/", views.open_addendum, name="reports-open-addendum"),
    path("reports/studies/<uuid:study_id>/", views.study_report, name="reports-open-study-report"),
    path("reports/studies/<uuid:study_id>/write/", views.write_report, name="reports-write-report"),
    path(
        "reports/critical/<uuid:critical_id>/acknowledge/",
        views.acknowledge,
        name="reports-acknowledge-critical",
    ),
    path("reports/exit/", exit_pages.exit_page, name="reports-list-exits"),
    path("reports/exit/start/", exit_pages.start_export, name="reports-start-export"),
    path("reports/exit/<uuid:job_id>/cancel/", exit_pages.cancel_export, name="reports-cancel-export"),
    path("reports/exit/<uuid:job_id>/restart/", exit_pages.restart_export, name="reports-restart-export"),
    path("reports/exit/<uuid:job_id>/offboard/", exit_pages.offboard, name="reports-offboard-institution"),
    path("api/v1/studies/<uuid:pk>/priors/", priors.StudyPriorsView.as_view(), name="reports-list-study-priors"),
    *router.urls,
]
