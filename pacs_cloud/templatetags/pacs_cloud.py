"""Template helpers shared by every app: ``{% load pacs_cloud %}``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html

from pacs_cloud.lib.local_time import format_local, offset_label
from pacs_cloud.lib.person_names import display_name

register = template.Library()


@register.simple_tag(takes_context=True)
def navlink(context: dict[str, Any], url_name: str, label: str, *args: Any, **kwargs: Any) -> str:
    """A navigation link that marks itself current (``aria-current="page"``) on its pages.

    ``{% navlink "worklist-list-orders" "Orders" %}``; extra arguments go to ``reverse``.
    """
    url = reverse(url_name, args=args or None, kwargs=kwargs or None)
    request = context.get("request")
    path = getattr(request, "path", "")
    current = path == url or (url != "/" and path.startswith(url))
    if current:
        return format_html('<a href="{}" class="active" aria-current="page">{}</a>', url, label)
    return format_html('<a href="{}">{}</a>', url, label)


@register.filter
def person_name(value: object) -> str:
    """A DICOM PN (PS3.5 6.2.1) as every page shows it: ``张三 (ZHANG, SAN)`` (:func:`display_name`)."""
    return display_name(value)


@register.filter
def when(value: datetime | str | None, precision: str = "") -> str:
    """A time as every page shows it: in the institution's zone, with the zone (``2026-12-07 14:03 UTC+8``).

    ``{{ study.received_at|when }}``; ``|when:"seconds"`` adds the seconds. An
    ISO 8601 string with an offset is read first. Blank for no time.
    """
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is None or timezone.is_naive(value):
        return ""
    return format_local(value, timezone.get_current_timezone(), seconds=precision == "seconds")


@register.simple_tag
def zone_label() -> str:
    """The offset of the zone the page's times are in (``UTC+8``), for a column of wall-clock times."""
    return offset_label(timezone.localtime())
