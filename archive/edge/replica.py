"""The edge's replica of what the cloud knows about its institution.

The DICOM nodes allowed to call the edge (``GET /api/v1/edge/config/``)
here; the worklist's orders through the extension the worklist app adds
(``worklist.edge``). Synced at start and every ``EDGE_SYNC_SECONDS``, kept in
the outbox database, so modalities are recognised and their worklist
answered while the cloud is unreachable, after a restart too.

Worklist records travel as JSON: :func:`encode` and :func:`decode` keep the
dates and times the matching code (:mod:`pacs_cloud.lib.dicom_match`)
compares.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from .client import Cloud, CloudUnavailable
from .outbox import Outbox

log = logging.getLogger(__name__)


def encode(value: Any) -> Any:
    """A worklist record as JSON-safe values (dates and times tagged)."""
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, item),) = value.items()
            if key == "$datetime":
                return dt.datetime.fromisoformat(item)
            if key == "$date":
                return dt.date.fromisoformat(item)
            if key == "$time":
                return dt.time.fromisoformat(item)
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


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
