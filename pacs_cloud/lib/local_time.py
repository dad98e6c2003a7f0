"""Times as users read them: in their institution's time zone, saying which zone.

Times are stored in UTC. Every page, PDF and panel shows them in the time
zone of the institution the user works for (``Institution.time_zone``, an
IANA name such as ``Asia/Shanghai``) with the zone's label, so a radiologist
in Beijing and one reading remotely see the same study at the same local
time: ``2026-12-07 14:03 CST``. Pages get this from Django's current time
zone (activated per request by :mod:`pacs_cloud.context_processors`) and
the ``|date:"Y-m-d H:i T"`` format; code outside templates calls
:func:`format_local`.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = ZoneInfo("UTC")


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone ``name``; UTC for a blank or unknown name."""
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def format_local(value: dt.datetime | None, zone_name: str | None, *, seconds: bool = False) -> str:
    """``value`` (aware) in the zone, with its label: ``2026-12-07 14:03 CST``; blank for None."""
    if value is None:
        return ""
    local = value.astimezone(zone(zone_name))
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")
