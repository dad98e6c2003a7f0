"""Showing DICOM person names and institution-local times in pages."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from django import template

from pacs_cloud.lib.dicom_match import name_groups
from pacs_cloud.templatetags.pacs_cloud import person_name

register = template.Library()


@register.filter
def person(pn: str | None) -> str:
    """``WANG^XIAOMING=王^小明`` as ``王小明 (WANG, XIAOMING)``: the characters first, when the name has them."""
    alphabetic, ideographic, phonetic = name_groups(pn or "")
    latin = person_name(alphabetic or phonetic)
    if ideographic:
        chars = "".join(part for part in ideographic.split("^") if part)
        return f"{chars} ({latin})" if latin else chars
    return latin or "—"


@register.filter
def local_time(value: dt.datetime | None, tz_name: str) -> str:
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M")
