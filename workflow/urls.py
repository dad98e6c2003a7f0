from django.urls import include, path

from pacs_cloud.restapi import Router

from . import api, views

router = Router()
router.register("reading-tasks", api.ReadingTaskViewSet, basename="reading-task")
router.register("pools", api.RadiologistPoolViewSet, basename="pool")
router.register("pool-members", api.PoolMemberViewSet, basename="pool-member")
router.register("reading-agreements", api.ReadingAgreementViewSet, basename="reading-agreement")
router.register("routing-policies", api.RoutingPolicyViewSet, basename="routing-policy")

urlpatterns = [
    path("workflow/", views.worklist, name="workflow-view-worklist"),
    path("workflow/rows/", views.worklist_rows, name="workflow-list-rows"),
    path("workflow/tasks/<uuid:pk>/", views.task_detail, name="workflow-view-task"),
    path("workflow/tasks/<uuid:pk>/claim/", views.claim_task, name="workflow-claim-task"),
    path("workflow/tasks/<uuid:pk>/open/", views.open_task, name="workflow-open-task"),
    path("workflow/tasks/<uuid:pk>/release/", views.release_task, name="workflow-release-task"),
    path("workflow/policies/", views.policy_list, name="workflow-list-policies"),
    path("workflow/policies/edit/", views.policy_edit, name="workflow-edit-policy"),
    path("workflow/policies/<uuid:pk>/", views.policy_detail, name="workflow-view-policy"),
    path("workflow/policies/<uuid:pk>/diagram.svg", views.policy_diagram, name="workflow-view-policy-diagram"),
    path("workflow/pools/", views.pool_list, name="workflow-list-pools"),
    path("workflow/pools/<uuid:pk>/members/", views.pool_add_member, name="workflow-add-member"),
    path("workflow/pool-members/<uuid:pk>/", views.pool_edit_member, name="workflow-edit-member"),
    path("api/v1/", include(router.urls)),
    # Referrals and shares: their pages and /api/v1/referrals/, /api/v1/study-shares/.
    path("", include("workflow.referrals.urls")),
    # One patient across hospitals: /patient-links/, /api/v1/patient-links/, /api/v1/consents/, ...
    path("", include("workflow.links.urls")),
    # Onboarding: the checklist page and /api/v1/onboarding/.
    path("", include("workflow.onboarding.urls")),
    # Statistics: the page, each chart's CSV and /api/v1/statistics/<chart>/.
    path("", include("workflow.statistics.urls")),
]
