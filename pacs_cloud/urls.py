"""Top-level URLs. Each app owns its routes (UI, /api/v1/ and /dicomweb/) in its urls.py."""

from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from . import api, views
from .restapi import Router

router = Router()
router.register("api/v1/auth/tokens", api.ApiTokenViewSet, basename="pacs_cloud-token")
router.register("api/v1/institutions", api.InstitutionViewSet, basename="pacs_cloud-institution")
router.register("api/v1/memberships", api.MembershipViewSet, basename="pacs_cloud-membership")
router.register("api/v1/invitations", api.InvitationViewSet, basename="pacs_cloud-invitation")

members_api = api.MemberViewSet.as_view({"get": "list", "post": "create"})

# Swagger UI and Redoc set styles inline and Redoc searches in a blob: worker;
# the documentation pages (no patient data) relax the policy for exactly that.
docs_csp = csp_update({"style-src": ["'unsafe-inline'"], "worker-src": ["'self'", "blob:"]})

handler403 = views.permission_denied

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="pacs_cloud/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("institution/switch/", views.switch_institution, name="pacs_cloud-switch-institution"),
    path("account/tokens/", views.tokens, name="pacs_cloud-list-tokens"),
    path("account/tokens/<uuid:token_id>/revoke/", views.revoke_token, name="pacs_cloud-revoke-token"),
    path("institutions/<uuid:institution_id>/members/", views.members, name="pacs_cloud-list-members"),
    path(
        "institutions/<uuid:institution_id>/members/<uuid:user_uuid>/",
        views.member,
        name="pacs_cloud-edit-member",
    ),
    path(
        "institutions/<uuid:institution_id>/members/<uuid:user_uuid>/active/",
        views.set_member_active,
        name="pacs_cloud-activate-member",
    ),
    path("platform/institutions/new/", views.create_institution, name="pacs_cloud-create-institution"),
    path("invitation/", views.accept_invitation, name="pacs_cloud-accept-invitation"),
    path("healthz", views.healthz, name="healthz"),
    path("internal/push/", views.push_relay, name="pacs_cloud-push-relay"),
    path("api/v1/auth/token/", api.TokenView.as_view(), name="pacs_cloud-create-token"),
    path("api/v1/invitation/accept/", api.AcceptInvitationView.as_view(), name="pacs_cloud-accept-invitation-api"),
    path("api/v1/institutions/<uuid:institution_id>/members/", members_api, name="pacs_cloud-members"),
    *router.urls,
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", docs_csp(SpectacularSwaggerSplitView.as_view(url_name="schema")), name="api-docs"),
    path(
        "api/redoc/",
        docs_csp(SpectacularRedocView.as_view(url_name="schema", template_name="pacs_cloud/redoc.html")),
        name="api-redoc",
    ),
    path("admin/", admin.site.urls),
    path("", include("archive.urls")),
    path("", include("worklist.urls")),
    path("", include("workflow.urls")),
    path("", include("viewer.urls")),
    path("", include("reports.urls")),
]
