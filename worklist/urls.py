from django.urls import include, path

from archive.dicomweb import on_worker_thread
from pacs_cloud.restapi import Router

from . import api, edge, views

router = Router()
router.register("orders", api.OrderViewSet, basename="worklist-order")
router.register("procedures", api.ProcedureViewSet, basename="worklist-procedure")
router.register("stations", api.StationViewSet, basename="worklist-station")
router.register("reconciliation", api.ReconciliationViewSet, basename="worklist-reconciliation")

urlpatterns = [
    path("worklist/", views.order_list, name="worklist-list-orders"),
    path("worklist/register/", views.register, name="worklist-register-order"),
    path("worklist/orders/<uuid:pk>/", views.order_detail, name="worklist-show-order"),
    path("worklist/orders/<uuid:pk>/edit/", views.order_edit, name="worklist-edit-order"),
    path("worklist/orders/<uuid:pk>/arrive/", views.order_arrive, name="worklist-arrive-order"),
    path("worklist/orders/<uuid:pk>/cancel/", views.order_withdraw, {"how": "cancel"}, name="worklist-cancel-order"),
    path(
        "worklist/orders/<uuid:pk>/discontinue/",
        views.order_withdraw,
        {"how": "discontinue"},
        name="worklist-discontinue-order",
    ),
    path("worklist/reconciliation/", views.reconciliation_list, name="worklist-list-reconciliation"),
    path("worklist/reconciliation/<uuid:pk>/", views.reconciliation_item, name="worklist-show-reconciliation"),
    path("worklist/reconciliation/<uuid:pk>/link/", views.reconciliation_link, name="worklist-link-reconciliation"),
    path(
        "worklist/reconciliation/<uuid:pk>/correct/",
        views.reconciliation_correct,
        name="worklist-correct-reconciliation",
    ),
    path(
        "worklist/reconciliation/<uuid:pk>/dismiss/",
        views.reconciliation_dismiss,
        name="worklist-dismiss-reconciliation",
    ),
    path("worklist/catalogue/", views.catalogue, name="worklist-show-catalogue"),
    path("worklist/catalogue/procedures/new/", views.procedure_edit, name="worklist-add-procedure"),
    path("worklist/catalogue/procedures/<uuid:pk>/", views.procedure_edit, name="worklist-edit-procedure"),
    path("worklist/catalogue/stations/new/", views.station_edit, name="worklist-add-station"),
    path("worklist/catalogue/stations/<uuid:pk>/", views.station_edit, name="worklist-edit-station"),
    path("api/v1/edge/worklist/", on_worker_thread(edge.WorklistFeedView.as_view()), name="worklist-edge-feed"),
    path("api/v1/edge/mpps/", on_worker_thread(edge.MppsRelayView.as_view()), name="worklist-edge-mpps"),
    path("api/v1/", include(router.urls)),
]
