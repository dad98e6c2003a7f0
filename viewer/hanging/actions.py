"""Changes to hanging protocols (audited)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.models import Institution

from .models import HangingProtocol

FIELDS = ("name", "position", "modality", "body_region", "min_priors", "layout", "panes")


def do_save_hanging_protocol(
    *,
    acting_user: Any,
    protocol: HangingProtocol | None = None,
    institution: Institution | None = None,
    **values: Any,
) -> HangingProtocol:
    """Create (the institution's when given, else the acting user's own) or change a protocol."""
    created = protocol is None
    with transaction.atomic():
        if protocol is None:
            protocol = HangingProtocol(institution=institution, user=None if institution else acting_user)
        for name, value in values.items():
            if name not in FIELDS:
                raise TypeError(f"unknown hanging protocol field {name!r}")
            setattr(protocol, name, value)
        protocol.updated_at = timezone.now()
        protocol.full_clean()
        protocol.save()
        audit.record(
            "viewer.hangingprotocol.create" if created else "viewer.hangingprotocol.change",
            actor=acting_user,
            institution=protocol.institution_id,
            object_type="viewer.hangingprotocol",
            object_id=protocol.pk,
            detail={"name": protocol.name, "owner": "institution" if protocol.institution_id else "user"},
        )
    return protocol


def do_delete_hanging_protocol(protocol: HangingProtocol, *, acting_user: Any) -> None:
    with transaction.atomic():
        audit.record(
            "viewer.hangingprotocol.delete",
            actor=acting_user,
            institution=protocol.institution_id,
            object_type="viewer.hangingprotocol",
            object_id=protocol.pk,
            detail={"name": protocol.name},
        )
        protocol.delete()
