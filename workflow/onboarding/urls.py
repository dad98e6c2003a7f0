from django.urls import path

from . import api, views

urlpatterns = [
    path("onboarding/", views.onboarding, name="workflow-show-onboarding"),
    path("api/v1/onboarding/<uuid:institution_id>/", api.OnboardingView.as_view(), name="workflow-onboarding-status"),
    path(
        "api/v1/onboarding/<uuid:institution_id>/dicom-nodes/<uuid:node_id>/echo/",
        api.EchoView.as_view(),
        name="workflow-onboarding-echo",
    ),
    path(
        "api/v1/onboarding/<uuid:institution_id>/procedures/",
        api.CatalogueImportView.as_view(),
        name="workflow-onboarding-import-procedures",
    ),
    path(
        "api/v1/onboarding/<uuid:institution_id>/routing-policy/",
        api.RoutingTemplateView.as_view(),
        name="workflow-onboarding-routing-template",
    ),
    path(
        "api/v1/onboarding/<uuid:institution_id>/edge/",
        api.EdgeEnrolView.as_view(),
        name="workflow-onboarding-enrol-edge",
    ),
]
