"""The archive's routes: DICOMweb (PS3.18 paths), the REST API and the pages."""

from collections.abc import Callable
from typing import Any

from django.urls import include, path, register_converter

from pacs_cloud.lean import lean_for_bearer
from pacs_cloud.restapi import Router

from . import api, dicomweb, views
from .copies import pages as copy_pages
from .dicomweb import on_worker_thread
from .edge import cloud_api as edge_api
from .edge import pages as edge_pages
from .priors import api as priors_api
from .priors import views as priors_views


class UIDConverter:
    """A DICOM UID in a DICOMweb path: digits and dots, at most 64 characters."""

    regex = r"[0-9][0-9.]{0,63}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UIDConverter, "uid")

router = Router()
router.register("api/v1/studies", api.StudyViewSet, basename="archive-study")
router.register("api/v1/dicom-nodes", api.DicomNodeViewSet, basename="archive-dicom-node")
router.register("api/v1/ingest-conflicts", api.IngestConflictViewSet, basename="archive-ingest-conflict")
router.register("api/v1/edges", edge_api.EdgeGatewayViewSet, basename="archive-edge")
router.register("api/v1/prior-rules", priors_api.PriorRuleViewSet, basename="archive-prior-rule")


def _search(view: Callable[..., Any]) -> Callable[..., Any]:
    """A QIDO-RS view: on the worker threads, and on the lean path for bearer tokens."""
    return lean_for_bearer(on_worker_thread(view))


INSTANCE = "dicomweb/studies/<uid:study_uid>/series/<uid:series_uid>/instances/<uid:instance_uid>"

urlpatterns = [
    # DICOMweb: QIDO-RS searches
    path("dicomweb/studies", _search(dicomweb.StudiesView.as_view()), name="archive-search-studies"),
    path("dicomweb/series", _search(dicomweb.SeriesSearchView.as_view()), name="archive-search-series"),
    path("dicomweb/instances", _search(dicomweb.InstanceSearchView.as_view()), name="archive-search-instances"),
    path(
        "dicomweb/studies/<uid:study_uid>/series",
        _search(dicomweb.SeriesSearchView.as_view()),
        name="archive-search-study-series",
    ),
    path(
        "dicomweb/studies/<uid:study_uid>/instances",
        _search(dicomweb.InstanceSearchView.as_view()),
        name="archive-search-study-instances",
    ),
    path(
        "dicomweb/studies/<uid:study_uid>/series/<uid:series_uid>/instances",
        _search(dicomweb.InstanceSearchView.as_view()),
        name="archive-search-series-instances",
    ),
    # DICOMweb: WADO-RS retrievals (and STOW-RS into a study)
    path(
        "dicomweb/studies/<uid:study_uid>",
        on_worker_thread(dicomweb.StudyView.as_view()),
        name="archive-retrieve-study",
    ),
    path(
        "dicomweb/studies/<uid:study_uid>/metadata",
        on_worker_thread(dicomweb.StudyMetadataView.as_view()),
        name="archive-study-metadata",
    ),
    path(
        "dicomweb/studies/<uid:study_uid>/series/<uid:series_uid>",
        on_worker_thread(dicomweb.SeriesView.as_view()),
        name="archive-retrieve-series",
    ),
    path(
        "dicomweb/studies/<uid:study_uid>/series/<uid:series_uid>/metadata",
        on_worker_thread(dicomweb.SeriesMetadataView.as_view()),
        name="archive-series-metadata",
    ),
    path(INSTANCE, on_worker_thread(dicomweb.InstanceView.as_view()), name="archive-retrieve-instance"),
    path(
        f"{INSTANCE}/metadata",
        on_worker_thread(dicomweb.InstanceMetadataView.as_view()),
        name="archive-instance-metadata",
    ),
    path(
        f"{INSTANCE}/frames/<str:frames>",
        on_worker_thread(dicomweb.FramesView.as_view()),
        name="archive-retrieve-frames",
    ),
    path(
        f"{INSTANCE}/bulk/<path:path>",
        on_worker_thread(dicomweb.BulkDataView.as_view()),
        name="archive-retrieve-bulkdata",
    ),
    # Pages
    path("archive/import/", views.import_media, name="archive-import-media"),
    path("archive/import/file/", views.import_file, name="archive-import-file"),
    path("archive/import/dicomdir/", views.read_dicomdir, name="archive-read-dicomdir"),
    path("archive/dicom-nodes/", views.dicom_nodes, name="archive-list-dicom-nodes"),
    path("archive/dicom-nodes/<uuid:pk>/", views.dicom_node, name="archive-edit-dicom-node"),
    # Storage locations and copies
    path("archive/storage/", copy_pages.institution_storage, name="archive-edit-storage"),
    path("archive/storage/lifecycle/", copy_pages.save_lifecycle_rule, name="archive-save-lifecycle-rule"),
    path("archive/locations/", copy_pages.locations_health, name="archive-list-locations"),
    path("archive/studies/<uuid:study_id>/copies/", copy_pages.study_copies, name="archive-list-study-copies"),
    path("archive/prior-rules/", priors_views.prior_rules, name="archive-list-prior-rules"),
    path("archive/prior-rules/<uuid:pk>/", priors_views.prior_rule, name="archive-edit-prior-rule"),
    # Edge gateways: the admins' pages, and the endpoints an edge calls with its token
    path("archive/edges/", edge_pages.edges, name="archive-list-edges"),
    path("archive/edges/<uuid:pk>/", edge_pages.edge_detail, name="archive-edit-edge"),
    path("api/v1/edge/heartbeat/", on_worker_thread(edge_api.HeartbeatView.as_view()), name="archive-edge-heartbeat"),
    path(
        "api/v1/edge/quarantine/",
        on_worker_thread(edge_api.QuarantineReportView.as_view()),
        name="archive-edge-quarantine",
    ),
    path("api/v1/edge/confirm/", on_worker_thread(edge_api.ConfirmView.as_view()), name="archive-edge-confirm"),
    path("api/v1/edge/config/", on_worker_thread(edge_api.ConfigView.as_view()), name="archive-edge-config"),
    path("", include(router.urls)),
    # Break-glass: /break-glass/, /break-glass/review/ and /api/v1/break-glass/.
    path("", include("archive.breakglass.urls")),
]
