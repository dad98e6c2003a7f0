from django.urls import path

from . import api, views
from .figures import CHARTS

urlpatterns = [
    path("statistics/", views.statistics_page, name="workflow-view-statistics"),
    *[
        path(f"statistics/{slug}.csv", views.chart_csv(slug), name=f"workflow-export-statistics-{slug}")
        for slug in CHARTS
    ],
    *[path(f"api/v1/statistics/{slug}/", api.VIEWS[slug], name=f"workflow-statistics-{slug}") for slug in CHARTS],
]
