"""Showing DICOM person names and institution-local times in pages."""

from __future__ import annotations

import datetime as dt

from django import template

from pacs_cloud.lib.local_time import format_local
from pacs_cloud.lib.person_names import display_name

register = template.Library()


@register.filter
def person(pn: str | None) -> str:
    """A PN as every page shows it (``王小明 (WANG, XIAOMING)``), or a dash for none."""
    return display_name(pn) or "—"


@register.filter
def local_time(value: dt.datetime | None, tz_name: str) -> str:
    """A time in the named zone, with the zone (``2026-12-07 14:03 UTC+8``; :mod:`pacs_cloud.lib.local_time`)."""
    return format_local(value, tz_name)
