"""C-FIND attribute matching (PS3.4 C.2.2.2), for every C-FIND SCP.

An SCP describes each candidate entity as a *record*: a mapping from DICOM
keyword to a Python value — ``str`` (or a list of ``str`` for multi-valued
attributes), ``datetime.date`` for DA, ``datetime.time`` for TM,
``datetime.datetime`` for DT (naive, the local time it states), a list of records for a sequence, or ``None``
for an unknown (zero-length) value. :func:`record_matches` decides whether
the record matches a request Identifier; :func:`response_identifier` builds
the response Identifier holding exactly the requested attributes.

Keys the record lacks are not supported for matching: as PS3.4 K.2.2.1.1.2
requires, they are ignored for matching and returned with zero length.

Matching types, PS3.4 C.2.2.2:

* universal (zero-length key, or a single ``*``);
* single value, exact except that leading and trailing spaces are
  insignificant; for PN also insensitive to case, accents and full-width
  forms, and a key with one component group matches any of the value's
  groups (alphabetic, ideographic, phonetic) — the latitude C.2.2.2.1 grants;
* wild card ``*`` and ``?`` (not for dates, times or UIDs);
* list of UIDs (backslash-separated);
* ranges for DA, TM and DT (``a-b``, ``a-``, ``-b``), matched each on its
  own: without Extended Negotiation a date and a time key are independent;
* sequence matching (C.2.2.2.6): a one-item key sequence matches if at least
  one item of the record's sequence matches every key in it; a key sequence
  with no items or an empty item matches everything and asks for the whole
  sequence.

An entity whose value is unknown matches no non-universal key (K.2.2.1.1.1).
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import unicodedata
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

from . import dicom_datetime

Record = Mapping[str, Any]

# Attributes of the Identifier that are not keys.
NOT_KEYS = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "TimezoneOffsetFromUTC"})


class InvalidKey(ValueError):
    """A key's value cannot be used for matching (e.g. a malformed date range)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(f"{keyword}: {message}")
        self.keyword = keyword


# Values ------------------------------------------------------------------


def element_text(element: DataElement) -> str:
    """An element's value as one decoded string (values joined with backslashes)."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def is_universal(text: str) -> bool:
    return text == "" or text == "*"


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if v not in (None, "")]
    return [] if value == "" else [value]


@lru_cache(maxsize=512)
def _wildcard_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), flags | re.DOTALL)


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def match_text(key: str, value: str) -> bool:
    """Single value or wild card matching of one string value (case-sensitive)."""
    value = value.strip()
    if has_wildcard(key):
        return _wildcard_regex(key).fullmatch(value) is not None
    return key == value


# Person names --------------------------------------------------------------


def fold_name(text: str) -> str:
    """A person-name component group folded for matching: no case, accents,
    full-width forms, spaces around components or trailing empty components."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    components = [c.strip() for c in text.split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def name_groups(pn: str) -> list[str]:
    """The alphabetic, ideographic and phonetic groups of a PN value (PS3.5 6.2.1.1)."""
    groups = (pn or "").split("=")
    return (groups + ["", "", ""])[:3]


def _match_group(key: str, value: str) -> bool:
    key, value = fold_name(key), fold_name(value)
    if not value:
        return False
    if has_wildcard(key):
        return _wildcard_regex(key).fullmatch(value) is not None
    return key == value


def match_person_name(key: str, value: str) -> bool:
    """PN matching: case-, accent- and width-insensitive, per component group."""
    key_groups = key.split("=")
    value_groups = name_groups(value)
    if len(key_groups) == 1:
        return any(_match_group(key, group) for group in value_groups if group)
    for key_group, value_group in zip(key_groups, value_groups, strict=False):
        if is_universal(key_group.strip()):
            continue
        if not _match_group(key_group, value_group):
            return False
    return True


# Dates and times -----------------------------------------------------------


def _range(keyword: str, text: str, parse: Any) -> tuple[Any, Any]:
    try:
        return parse(text)
    except dicom_datetime.InvalidDicomDateTime as exc:
        raise InvalidKey(keyword, str(exc)) from None


_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_DT_ONE = re.compile(_DT)
_DT_RANGE = re.compile(f"({_DT})?-({_DT})?")


def _dt_bounds(value: str) -> tuple[dt.datetime, dt.datetime]:
    """The first and last instant a DT value of any precision covers (its UTC
    offset, if any, is dropped: values are compared as the local times they state)."""
    digits, _, fraction = re.sub(r"[+-]\d{4}$", "", value).partition(".")
    first = digits + "0101000000"[len(digits) - 4 :] if len(digits) < 14 else digits
    # A DT without offset is a local wall-clock time: naive on purpose.
    start = dt.datetime.strptime(first[:14], "%Y%m%d%H%M%S")  # noqa: DTZ007
    start = start.replace(microsecond=int(fraction.ljust(6, "0") or 0))
    if fraction:
        return start, start
    steps = {4: "years", 6: "months", 8: "days", 10: "hours", 12: "minutes", 14: "seconds"}
    unit = steps[len(digits)]
    if unit == "years":
        end = start.replace(year=start.year + 1)
    elif unit == "months":
        end = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    else:
        end = start + dt.timedelta(**{unit: 1})
    return start, end - dt.timedelta(microseconds=1)


def parse_dt_range(text: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """A DT matching key: a value, ``from-``, ``-to`` or ``from-to``, inclusive."""
    text = text.strip()
    try:
        if _DT_ONE.fullmatch(text):
            return _dt_bounds(text)
        match = _DT_RANGE.fullmatch(text)
        if match is None:
            raise ValueError(text)
        start, end = match.groups()
        return (_dt_bounds(start)[0] if start else None, _dt_bounds(end)[1] if end else None)
    except ValueError:
        raise dicom_datetime.InvalidDicomDateTime(f"{text!r} is not a DICOM date-time or range") from None


def in_range(value: Any, bounds: tuple[Any, Any]) -> bool:
    low, high = bounds
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


# Records -------------------------------------------------------------------


def _match_element(element: DataElement, record_value: Any) -> bool:
    keyword = element.keyword
    vr = element.VR
    if vr == "SQ":
        items = element.value or []
        if not items or len(items[0]) == 0:
            return True
        return any(record_matches(items[0], item) for item in (record_value or []))
    text = element_text(element)
    if is_universal(text):
        return True
    values = _values(record_value)
    if not values:
        return False  # an unknown value fails every non-universal key
    if vr == "DA":
        bounds = _range(keyword, text, dicom_datetime.parse_da_range)
        return any(in_range(v, bounds) for v in values)
    if vr == "TM":
        bounds = _range(keyword, text, dicom_datetime.parse_tm_range)
        return any(in_range(v, bounds) for v in values)
    if vr == "DT":
        bounds = _range(keyword, text, parse_dt_range)
        return any(in_range(v, bounds) for v in values)
    if vr == "UI":
        wanted = {uid.strip() for uid in text.split("\\")}
        return any(str(v) in wanted for v in values)
    keys = text.split("\\")
    if vr == "PN":
        return any(match_person_name(k, str(v)) for k in keys for v in values)
    return any(match_text(k.strip(), str(v)) for k in keys for v in values)


def record_matches(identifier: Dataset, record: Record) -> bool:
    """True if ``record`` matches every key of ``identifier`` it supports."""
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in NOT_KEYS or element.tag.group == 0:
            continue
        if keyword not in record:
            continue
        if not _match_element(element, record[keyword]):
            return False
    return True


def check_keys(identifier: Dataset) -> None:
    """Raise :class:`InvalidKey` if a date, time or datetime key is malformed."""
    for element in identifier:
        if element.VR == "SQ":
            for item in element.value or []:
                check_keys(item)
            continue
        text = element_text(element) if element.VR in ("DA", "TM", "DT") else ""
        if is_universal(text):
            continue
        parse = {
            "DA": dicom_datetime.parse_da_range,
            "TM": dicom_datetime.parse_tm_range,
            "DT": parse_dt_range,
        }[element.VR]
        _range(element.keyword, text, parse)


def to_dicom(vr: str, value: Any) -> Any:
    """A record value as a pydicom element value for ``vr``."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [to_dicom(vr, v) for v in value] or None
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if isinstance(value, dt.date):
        return dicom_datetime.format_da(value)
    if isinstance(value, dt.time):
        return dicom_datetime.format_tm(value)
    return value if value != "" else None


def _response_items(key_items: Any, record_items: Any) -> list[Dataset]:
    records = list(record_items or [])
    if not key_items or len(key_items[0]) == 0:
        return [_full_item(r) for r in records]
    key_item = key_items[0]
    return [_requested(key_item, r) for r in records if record_matches(key_item, r)]


def _full_item(record: Record) -> Dataset:
    ds = Dataset()
    for keyword, value in record.items():
        vr = dictionary_VR(keyword)
        if vr == "SQ":
            setattr(ds, keyword, Sequence([_full_item(r) for r in value or []]))
        else:
            ds.add_new(keyword, vr, to_dicom(vr, value))
    return ds


def _requested(identifier: Dataset, record: Record, into: Dataset | None = None) -> Dataset:
    ds = into if into is not None else Dataset()
    for element in identifier:
        if element.tag.group == 0 or element.keyword == "SpecificCharacterSet":
            continue
        keyword = element.keyword or keyword_for_tag(element.tag)
        value = record.get(keyword) if keyword else None
        if element.VR == "SQ":
            ds.add(DataElement(element.tag, "SQ", Sequence(_response_items(element.value, value))))
        else:
            ds.add(DataElement(element.tag, element.VR, to_dicom(element.VR, value)))
    return ds


def response_identifier(identifier: Dataset, record: Record, *, character_set: str | None = None) -> Dataset:
    """The C-FIND response Identifier for ``record``: the requested attributes only.

    ``character_set`` is written first so pydicom encodes every text value with
    it (PS3.4 C.4.1.1.3.2: included when an extended character set may be used).
    """
    ds = Dataset()
    if character_set:
        ds.SpecificCharacterSet = character_set
    return _requested(identifier, record, ds)


def texts(record: Record) -> Iterable[str]:
    """Every text value of a record, sequences included (to choose a character set)."""
    for value in record.values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str):
                yield item
            elif isinstance(item, Mapping):
                yield from texts(item)


# Encoding a response Identifier directly -----------------------------------
#
# pydicom builds a DataElement per value (validating it) and writes each one
# through several layers; a worklist answer of a few dozen short strings
# costs most of its time there. :func:`encode_response` writes the bytes
# :func:`response_identifier` would be encoded to, for the cases that are
# plain (Little Endian, a character set without ISO 2022 code extensions,
# text and string values), and declines the rest.

# Text VRs encoded in the Specific Character Set; string VRs in the default repertoire.
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
# Explicit VR elements with a 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM = struct.Struct("<HHI")
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2sHI")
_SPECIFIC_CHARACTER_SET = 0x00080005


class _Declined(Exception):
    """A value :func:`encode_response` leaves to pydicom."""


class _Writer:
    def __init__(self, codec: str, implicit_vr: bool) -> None:
        self.codec = codec
        self.implicit_vr = implicit_vr

    def element(self, tag: int, vr: str, value: bytes) -> bytes:
        if self.implicit_vr:
            return _ITEM.pack(tag >> 16, tag & 0xFFFF, len(value)) + value
        if len(vr) != 2:
            raise _Declined(vr)  # an ambiguous VR ("US or SS"): pydicom resolves it
        if vr in _LONG_LENGTH_VRS:
            return _LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
        if len(value) > 0xFFFF:
            raise _Declined(vr)
        return _SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value

    def value(self, vr: str, value: Any) -> bytes:
        value = to_dicom(vr, value)
        if value is None:
            return b""
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise _Declined(vr)
            value = "\\".join(value)
        if not isinstance(value, str):
            raise _Declined(vr)
        try:
            if vr in _TEXT_VRS:
                data = value.encode(self.codec)
            elif vr in _STRING_VRS:
                data = value.encode("latin-1")
            else:
                raise _Declined(vr)
        except UnicodeEncodeError:
            raise _Declined(vr) from None  # pydicom decides what to write instead
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        return data

    def item(self, body: bytes) -> bytes:
        return _ITEM.pack(0xFFFE, 0xE000, len(body)) + body

    def sequence(self, key_items: Any, record_items: Any) -> bytes:
        records = list(record_items or [])
        if not key_items or len(key_items[0]) == 0:
            return b"".join(self.item(self.full(r)) for r in records)
        key_item = key_items[0]
        return b"".join(self.item(self.requested(key_item, r)) for r in records if record_matches(key_item, r))

    def full(self, record: Record) -> bytes:
        elements = []
        for keyword, value in record.items():
            tag = tag_for_keyword(keyword)
            vr = dictionary_VR(keyword)
            if tag is None:
                raise _Declined(keyword)
            body = self.sequence(None, value) if vr == "SQ" else self.value(vr, value)
            elements.append((tag, self.element(tag, vr, body)))
        return b"".join(encoded for _, encoded in sorted(elements))

    def requested(self, identifier: Dataset, record: Record) -> bytes:
        parts = []
        for element in identifier:
            tag = element.tag
            if tag.group == 0 or tag == _SPECIFIC_CHARACTER_SET:
                continue
            keyword = element.keyword or keyword_for_tag(tag)
            value = record.get(keyword) if keyword else None
            vr = element.VR
            body = self.sequence(element.value, value) if vr == "SQ" else self.value(vr, value)
            parts.append(self.element(tag, vr, body))
        return b"".join(parts)


def encode_response(
    identifier: Dataset, record: Record, *, character_set: str | None = None, implicit_vr: bool
) -> bytes | None:
    """The encoding of ``response_identifier(identifier, record, character_set=...)``
    in Little Endian (Implicit or Explicit VR), or None where pydicom must encode it.

    Byte for byte what pydicom writes for that Dataset; it declines ISO 2022
    character sets (code extensions), values its character set cannot hold,
    ambiguous VRs and values that are neither text nor strings.
    """
    codec = python_encoding.get(character_set or "")
    if codec is None or (character_set or "").startswith("ISO 2022"):
        return None
    if character_set and any(0xFFFF < tag < _SPECIFIC_CHARACTER_SET for tag in identifier.keys()):
        return None  # a key that sorts before Specific Character Set
    writer = _Writer(codec, implicit_vr)
    try:
        body = writer.requested(identifier, record)
        if not character_set:
            return body
        first = writer.element(_SPECIFIC_CHARACTER_SET, "CS", writer.value("CS", character_set))
    except _Declined:
        return None
    return first + body
