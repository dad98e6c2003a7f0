"""Top-level URLs. Each app owns its routes (UI, /api/v1/ and /dicomweb/) in its urls.py."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="pacs_cloud/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("institution/switch/", views.switch_institution, name="pacs_cloud-switch-institution"),
    path("healthz", views.healthz, name="healthz"),
    path("internal/push/", views.push_relay, name="pacs_cloud-push-relay"),
    path("api/v1/auth/token/", views.TokenView.as_view(), name="pacs_cloud-create-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("", include("archive.urls")),
    path("", include("worklist.urls")),
    path("", include("workflow.urls")),
    path("", include("viewer.urls")),
    path("", include("reports.urls")),
]
