"""The demo's edge gateway for Riverside County Hospital (``make run`` starts it).

Enrolled as Riverside's admin would; its token is written to
``$PACS_DATA_DIR/demo-edge-token`` (readable by this user only), where the
Procfile's ``edge`` process reads it. Idempotent: an existing edge keeps its
token; a lost token file gets a rotated token.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

from pacs_cloud.models import Institution, User

from ..models import EdgeGateway
from . import enrolment

EDGE_NAME = "Riverside front server"


def token_file() -> Path:
    return Path(settings.DATA_DIR) / "demo-edge-token"


def _write_token(key: str) -> None:
    path = token_file()
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(key)


def seed() -> list[str]:
    institution = Institution.objects.get(slug="riverside")
    admin = User.objects.get(username="admin@riverside")
    edge = EdgeGateway.objects.filter(institution=institution, name=EDGE_NAME).first()
    if edge is None or edge.revoked_at is not None:
        if edge is not None:
            edge.delete()
            edge = None
        _, key = enrolment.do_enrol_edge(institution, name=EDGE_NAME, acting_user=admin)
        _write_token(key)
    elif not token_file().exists():
        _write_token(enrolment.do_rotate_edge_token(edge, acting_user=admin))
    return [
        f"{settings.EDGE_AE_TITLE:<18} Riverside's edge gateway at 127.0.0.1:{settings.EDGE_DICOM_PORT} "
        f"(status http://127.0.0.1:{settings.EDGE_STATUS_PORT}/); its token is in {token_file()}"
    ]
