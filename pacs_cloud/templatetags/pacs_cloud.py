"""Template helpers shared by every app: ``{% load pacs_cloud %}``."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html

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
def person_name(value: str) -> str:
    """A DICOM PN (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``, PS3.5 6.2.1) for reading.

    Only the first (alphabetic) component group is shown; empty components drop.
    """
    if not value:
        return ""
    alphabetic = str(value).split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in parts[2:] if p)
    name = ", ".join(p for p in (family, " ".join(p for p in (given, rest) if p)) if p)
    return name or str(value)
