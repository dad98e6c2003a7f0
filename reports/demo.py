"""The reports' part of the demo (filled in with the demo report)."""

from __future__ import annotations


def seed() -> list[str]:
    return []
