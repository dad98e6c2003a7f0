"""The edge's replica of what the cloud knows about its institution: the DICOM nodes allowed to call it.

Synced from the cloud (``GET /api/v1/edge/config/``) at start and every
``EDGE_SYNC_SECONDS``, kept in the outbox database, so modalities are
recognised while the cloud is unreachable, after a restart too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .client import Cloud, CloudUnavailable
from .outbox import Outbox

log = logging.getLogger(__name__)


class Replica:
    def __init__(self, outbox: Outbox, cloud: Cloud) -> None:
        self.outbox = outbox
        self.cloud = cloud
        self._nodes: dict[str, tuple[str, int | None, str]] = {}
        self._load()

    def _load(self) -> None:
        rows = self.outbox.query("SELECT ae_title, host, port, character_set FROM nodes")
        self._nodes = {ae: (host, port, charset or "") for ae, host, port, charset in rows}

    def allows(self, ae_title: str, address: str) -> bool:
        found = self._nodes.get(ae_title)
        return found is not None and (not found[0] or found[0] == address)

    def node(self, ae_title: str) -> tuple[str, int | None, str] | None:
        return self._nodes.get(ae_title)

    @property
    def last_sync_at(self) -> float | None:
        value = self.outbox.get_state("last_sync_at")
        return float(value) if value else None

    def apply_config(self, config: dict[str, Any]) -> None:
        with self.outbox.transaction() as db:
            db.execute("DELETE FROM nodes")
            for node in config.get("nodes", []):
                db.execute(
                    "INSERT INTO nodes (ae_title, host, port, character_set) VALUES (?, ?, ?, ?)",
                    (node["ae_title"], node.get("host") or "", node.get("port"), node.get("character_set") or ""),
                )
        self._load()

    def sync(self) -> bool:
        """One sync with the cloud; False when it could not be reached (the replica stays as it was)."""
        try:
            self.apply_config(self.cloud.config())
        except CloudUnavailable as exc:
            log.info("worklist replica not synced: %s", exc)
            return False
        self.outbox.set_state("last_sync_at", str(time.time()))
        return True
