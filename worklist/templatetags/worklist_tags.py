"""Showing DICOM person names and institution-local times in pages."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from django import template

from pacs_cloud.lib.person_names import display_name

register = template.Library()


@register.filter
def person(pn: str | None) -> str:
    """A PN as every page shows it (``王小明 (WANG, XIAOMING)``), or a dash for none."""
    return display_name(pn) or "—"


@register.filter
def local_time(value: dt.datetime | None, tz_name: str) -> str:
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M")
