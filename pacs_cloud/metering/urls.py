"""Usage pages and the usage API."""

from django.urls import path, register_converter

from . import api, views


class MonthConverter:
    regex = r"[0-9]{4}-[0-9]{2}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(MonthConverter, "month")

urlpatterns = [
    path("usage/", views.usage_home, name="pacs_cloud-view-usage"),
    path("usage/prices/", views.prices, name="pacs_cloud-edit-usage-prices"),
    path("usage/<month:month>/", views.overview, name="pacs_cloud-view-usage-overview"),
    path(
        "institutions/<uuid:institution_id>/usage/<month:month>/",
        views.statement_page,
        name="pacs_cloud-view-usage-statement",
    ),
    path(
        "institutions/<uuid:institution_id>/usage/<month:month>/statement.csv",
        views.statement_csv_view,
        name="pacs_cloud-export-usage-csv",
    ),
    path(
        "institutions/<uuid:institution_id>/usage/<month:month>/statement.pdf",
        views.statement_pdf_view,
        name="pacs_cloud-export-usage-pdf",
    ),
    path("api/v1/usage/prices/", api.PriceListView.as_view(), name="pacs_cloud-usage-prices"),
    path("api/v1/usage/overview/<month:month>/", api.OverviewView.as_view(), name="pacs_cloud-usage-overview"),
    path(
        "api/v1/usage/statements/<uuid:institution_id>/<month:month>/",
        api.StatementView.as_view(),
        name="pacs_cloud-usage-statement",
    ),
]
