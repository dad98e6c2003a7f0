"""The demo's statistics: summary rows for whatever the other seeders made (idempotent)."""

from __future__ import annotations

from .record import rebuild


def seed() -> list[str]:
    """Rows for every demo study, including any the seeders wrote without an action; no new logins."""
    rebuild()
    return []
