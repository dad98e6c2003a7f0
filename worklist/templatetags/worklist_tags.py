"""Showing DICOM person names and institution-local times in pages."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from django import template

from pacs_cloud.lib.dicom_match import name_groups

register = template.Library()


def _words(group: str) -> str:
    return " ".join(part for part in group.split("^") if part)


@register.filter
def person(pn: str | None) -> str:
    """``WANG^XIAOMING=王^小明`` as ``王小明 (WANG XIAOMING)``: characters first when present."""
    alphabetic, ideographic, phonetic = name_groups(pn or "")
    latin = _words(alphabetic) or _words(phonetic)
    if ideographic:
        chars = "".join(part for part in ideographic.split("^") if part)
        return f"{chars} ({latin})" if latin else chars
    return latin or "—"


@register.filter
def local_time(value: dt.datetime | None, tz_name: str) -> str:
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M")
