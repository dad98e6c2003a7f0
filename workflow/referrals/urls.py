from django.urls import include, path

from pacs_cloud.restapi import Router

from . import api, views

router = Router()
router.register("referrals", api.ReferralViewSet, basename="referral")
router.register("study-shares", api.StudyShareViewSet, basename="study-share")

urlpatterns = [
    path("referrals/", views.referral_list, name="workflow-list-referrals"),
    path("referrals/new/", views.referral_new, name="workflow-create-referral"),
    path("referrals/<uuid:pk>/", views.referral_detail, name="workflow-view-referral"),
    path("referrals/<uuid:pk>/act/", views.referral_act, name="workflow-change-referral"),
    path("shares/", views.share_list, name="workflow-list-shares"),
    path("shares/new/", views.share_new, name="workflow-create-share"),
    path("shares/<uuid:pk>/act/", views.share_act, name="workflow-change-share"),
    path("api/v1/", include(router.urls)),
]
