"""The reports' panels on the home page (filled in with the UI)."""

from __future__ import annotations

from django.http import HttpRequest

from pacs_cloud.home import Panel
from pacs_cloud.models import Institution


def report_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    return []
