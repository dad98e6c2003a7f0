"""DICOM unique identifiers (PS3.5 §9).

A UID is at most 64 characters of digits in dot-separated components. Real
equipment sometimes writes components with leading zeros, which PS3.5 forbids:
looking a UID up accepts them (only the character set, the shape and the
length make a UID safe in a storage key or a path), but the archive and the
edge refuse to store an object whose UIDs do not conform (``strict``), since
other systems would refuse it later.
"""

from __future__ import annotations

import re
import uuid

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*", re.ASCII)
# PS3.5 9.1: a component is 0 or a number without a leading zero.
_CONFORMANT_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*", re.ASCII)
UID_MAX_LENGTH = 64


class InvalidUID(ValueError):
    pass


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= UID_MAX_LENGTH and _UID.fullmatch(value) is not None


def is_conformant_uid(value: object) -> bool:
    """A UID as PS3.5 9.1 has it: also no component with a leading zero."""
    return isinstance(value, str) and is_valid_uid(value) and _CONFORMANT_UID.fullmatch(value) is not None


def require_uid(value: object, what: str = "UID", *, strict: bool = False) -> str:
    """Return ``value`` if it is a well-formed UID (``strict``: conformant), else raise :class:`InvalidUID`."""
    shown = repr(value)[:80]
    if not is_valid_uid(value):
        raise InvalidUID(f"{what} {shown} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    if strict and not is_conformant_uid(value):
        raise InvalidUID(f"{what} {shown} has a component with a leading zero (PS3.5 9.1)")
    return value  # type: ignore[return-value]


def new_uid() -> str:
    """A fresh UID under the UUID-derived root 2.25 (PS3.5 §B.2)."""
    return f"2.25.{uuid.uuid4().int}"
