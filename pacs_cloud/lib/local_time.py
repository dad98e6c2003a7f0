"""Times as users read them: in their institution's time zone, saying which zone.

Times are stored in UTC. Every page, PDF and panel shows them in the time
zone of the institution the user works for (``Institution.time_zone``, an
IANA name such as ``Asia/Shanghai``) followed by the zone's offset, so the
same study reads the same everywhere: ``2026-12-07 14:03 UTC+8``. Pages use
the ``|when`` filter (``{% load pacs_cloud %}``), which reads the zone the
request activated (:func:`pacs_cloud.context_processors.tenancy`); scripts
format with ``pacsTime()`` (``pacs_cloud/app.js``) in the zone the page
names on ``<body data-time-zone>``; other code calls :func:`format_local`.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = ZoneInfo("UTC")


def zone(name: str | dt.tzinfo | None) -> dt.tzinfo:
    """The IANA zone ``name`` (a zone passes through); UTC for a blank or unknown name."""
    if isinstance(name, dt.tzinfo):
        return name
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def offset_label(local: dt.datetime) -> str:
    """``UTC``, ``UTC+8``, ``UTC-3:30``: the offset of an aware local time, as the label users read."""
    offset = local.utcoffset() or dt.timedelta(0)
    if not offset:
        return "UTC"
    minutes = int(abs(offset).total_seconds()) // 60
    sign = "+" if offset > dt.timedelta(0) else "-"
    hours, rest = divmod(minutes, 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def format_local(value: dt.datetime | None, time_zone: str | dt.tzinfo | None, *, seconds: bool = False) -> str:
    """``value`` (aware) in the zone, with its offset: ``2026-12-07 14:03 UTC+8``; blank for None."""
    if value is None:
        return ""
    local = value.astimezone(zone(time_zone))
    return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " " + offset_label(local)
