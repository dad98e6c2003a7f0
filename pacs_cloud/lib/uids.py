"""DICOM unique identifiers (PS3.5 §9).

A UID is at most 64 characters of digits in dot-separated components. Real
equipment sometimes writes components with leading zeros, which PS3.5 forbids
but which is harmless, so only the character set, the shape and the length are
enforced here: that is what makes a UID safe to use in a storage key or a path.
"""

from __future__ import annotations

import re
import uuid

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
UID_MAX_LENGTH = 64


class InvalidUID(ValueError):
    pass


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= UID_MAX_LENGTH and _UID.fullmatch(value) is not None


def require_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` if it is a well-formed UID, else raise :class:`InvalidUID`."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(f"{what} {shown} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return value  # type: ignore[return-value]


def new_uid() -> str:
    """A fresh UID under the UUID-derived root 2.25 (PS3.5 §B.2)."""
    return f"2.25.{uuid.uuid4().int}"
