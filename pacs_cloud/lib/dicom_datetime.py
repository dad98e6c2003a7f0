"""DICOM DA, TM and DT values (PS3.5 §6.2) to and from Python, in one place.

Stored times are timezone-aware UTC; DICOM dates and times are local to the
institution that produced them, so conversions take the institution's zone.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")


class InvalidDicomDateTime(ValueError):
    pass


def parse_da(value: str | None) -> dt.date | None:
    """``YYYYMMDD`` (also the old ``YYYY.MM.DD``) to a date; empty gives None."""
    value = (value or "").strip().replace(".", "")
    if not value:
        return None
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError(value)
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError as exc:
        raise InvalidDicomDateTime(f"{value!r} is not a DICOM date (YYYYMMDD)") from exc


def parse_tm(value: str | None) -> dt.time | None:
    """``HH[MM[SS[.FFFFFF]]]`` (colons tolerated) to a time; empty gives None."""
    value = (value or "").strip()
    if not value:
        return None
    match = _TM.fullmatch(value)
    if not match:
        raise InvalidDicomDateTime(f"{value!r} is not a DICOM time (HHMMSS.FFFFFF)")
    hh, mm, ss, frac = match.groups()
    try:
        return dt.time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError as exc:
        raise InvalidDicomDateTime(f"{value!r} is not a DICOM time") from exc


def format_da(value: dt.date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def format_tm(value: dt.time | None) -> str:
    if value is None:
        return ""
    text = value.strftime("%H%M%S")
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def parse_da_range(value: str | None) -> tuple[dt.date | None, dt.date | None]:
    """A DA matching key (PS3.4 C.2.2.2.5): a date, ``from-``, ``-to`` or ``from-to``.

    Returns inclusive bounds; ``(None, None)`` for an empty key (universal match).
    """
    value = (value or "").strip()
    if "-" not in value:
        day = parse_da(value)
        return day, day
    start, _, end = value.partition("-")
    return parse_da(start), parse_da(end)


def parse_tm_range(value: str | None) -> tuple[dt.time | None, dt.time | None]:
    """A TM matching key: a time, ``from-``, ``-to`` or ``from-to``, inclusive."""
    value = (value or "").strip()
    if "-" not in value:
        moment = parse_tm(value)
        return moment, _end_of_precision(value) if moment else None
    start, _, end = value.partition("-")
    return parse_tm(start), _end_of_precision(end) if end.strip() else None


def _end_of_precision(value: str) -> dt.time | None:
    """The last instant a partial time covers: ``10`` means up to 10:59:59.999999."""
    value = value.strip().replace(":", "")
    moment = parse_tm(value)
    if moment is None:
        return None
    digits = value.split(".")[0]
    if len(digits) <= 2:
        return moment.replace(minute=59, second=59, microsecond=999999)
    if len(digits) <= 4:
        return moment.replace(second=59, microsecond=999999)
    if "." not in value:
        return moment.replace(microsecond=999999)
    return moment


def to_aware(day: dt.date, moment: dt.time | None, tz_name: str) -> dt.datetime:
    """A local DICOM date and time at an institution, as an aware UTC datetime."""
    local = dt.datetime.combine(day, moment or dt.time(0, 0), tzinfo=ZoneInfo(tz_name))
    return local.astimezone(dt.UTC)


def local_date_time(value: dt.datetime, tz_name: str) -> tuple[str, str]:
    """An aware datetime as DICOM DA and TM strings in the institution's zone."""
    local = value.astimezone(ZoneInfo(tz_name))
    return format_da(local.date()), format_tm(local.time().replace(microsecond=0))
