"""Configuration errors reported by ``manage.py check`` instead of at run time."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_role(app_configs: Any, **kwargs: Any) -> list[Error]:
    if settings.PACS_ROLE not in ("cloud", "edge"):
        return [Error(f"PACS_ROLE is {settings.PACS_ROLE!r}", hint="Use 'cloud' or 'edge'.", id="pacs_cloud.E001")]
    if settings.PACS_ROLE == "edge" and not settings.EDGE_TOKEN:
        return [Error("An edge needs EDGE_TOKEN", hint="Enrol the edge in the cloud to get one.", id="pacs_cloud.E002")]
    return []
