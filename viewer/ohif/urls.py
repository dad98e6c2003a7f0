from django.urls import path

from . import views

urlpatterns = [
    path("ohif/", views.index, name="viewer-open-ohif"),
    path("ohif/app-config.js", views.config_script, name="viewer-ohif-config"),
    path("ohif/<path:path>", views.asset, name="viewer-ohif-file"),
]
