from django.urls import include, path

from pacs_cloud.restapi import Router

from . import api, views

router = Router()
router.register("patient-links", api.PatientLinkViewSet, basename="patient-link")
router.register("link-suggestions", api.LinkSuggestionViewSet, basename="link-suggestion")
router.register("consents", api.ConsentViewSet, basename="consent")

urlpatterns = [
    path("patient-links/", views.patient_links, name="workflow-list-patient-links"),
    path("patient-links/act/", views.patient_links_act, name="workflow-change-patient-links"),
    path("patient-links/reads/", views.outside_reads_search, name="workflow-search-outside-reads"),
    path("patients/<uuid:pk>/outside-reads/", views.outside_reads, name="workflow-list-outside-reads"),
    path("api/v1/patients/<uuid:pk>/outside-reads/", api.OutsideReadsView.as_view(), name="workflow-api-outside-reads"),
    path("api/v1/", include(router.urls)),
]
