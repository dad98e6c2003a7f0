"""The edge gateway process: the parts of :mod:`archive.edge` put together and kept running.

``manage.py edge_gateway`` builds a :class:`Gateway` and calls :meth:`run`;
tests and benchmarks do the same with other ports and folders.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from . import VERSION, scp, status
from .client import Cloud, CloudUnavailable
from .forwarder import Forwarder
from .outbox import PENDING, QUARANTINED, Outbox
from .replica import Replica
from .tier import OnlineTier

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        cloud_url: str | None = None,
        token: str | None = None,
        ae_title: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir or settings.DATA_DIR) / "edge"
        self.online_dir = self.data_dir / "online"
        self.online_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title or settings.EDGE_AE_TITLE
        self.max_instance_bytes = settings.MAX_INSTANCE_BYTES
        self.outbox = Outbox(self.data_dir / "outbox.sqlite3")
        self.cloud = Cloud(cloud_url or settings.CLOUD_URL, token if token is not None else settings.EDGE_TOKEN)
        self.replica = Replica(self.outbox, self.cloud)
        self.forwarder = Forwarder(
            self.outbox,
            self.cloud,
            batch=settings.EDGE_FORWARD_BATCH,
            concurrency=settings.EDGE_FORWARD_CONCURRENCY,
            max_delay=settings.EDGE_RETRY_MAX_SECONDS,
            max_refusals=settings.EDGE_REFUSED_MAX_ATTEMPTS,
        )
        self._stop = threading.Event()
        self._servers: list[Any] = []
        self._wakes: list[threading.Event] = []
        self.started_at = time.time()
        # Apps above the archive add their edge services (the worklist's MWL and MPPS)
        # the way they add DICOM services to the cloud: listed in settings.
        self.tier = OnlineTier(self)
        self.extensions = [import_string(dotted)(self) for dotted in settings.EDGE_EXTENSIONS]

    def extra_services(self) -> list[Any]:
        return [*self.tier.services(), *(s for extension in self.extensions for s in extension.services())]

    # Health -----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        counts = self.outbox.counts()
        last_sync = self.replica.last_sync_at
        online = self.outbox.query("SELECT COALESCE(SUM(size), 0) FROM instances WHERE state != 'evicted'")[0][0]
        extra: dict[str, Any] = {}
        for extension in self.extensions:
            extra.update(extension.report())
        return {
            "version": VERSION,
            "ae_title": self.ae_title,
            "cloud_url": self.cloud.url,
            "cloud_reachable": not self.forwarder.cloud_down,
            "last_error": self.forwarder.last_error,
            "outbox_depth": counts.get(PENDING, 0),
            "oldest_unsent_seconds": self.outbox.oldest_pending_age(),
            "forwarded": counts.get("forwarded", 0) + counts.get("evicted", 0),
            "quarantined": counts.get(QUARANTINED, 0),
            "disk_free_bytes": shutil.disk_usage(self.data_dir).free,
            "online_bytes": online,
            "evicted": counts.get("evicted", 0),
            "restored": self.tier.restored,
            "last_sync_at": dt.datetime.fromtimestamp(last_sync, dt.UTC).isoformat() if last_sync else None,
            **extra,
        }

    def report_to_cloud(self) -> None:
        """Quarantine news first (never lost: marked reported only once the cloud took it), then the heartbeat."""
        try:
            items = self.outbox.unreported_quarantine()
            if items:
                self.cloud.report_quarantine(items)
                self.outbox.mark_reported(items)
            self.cloud.heartbeat(self.report())
        except CloudUnavailable as exc:
            log.info("heartbeat not delivered: %s", exc)

    # Running ----------------------------------------------------------------------------

    def _every(self, seconds: float, job: Any, wake: threading.Event | None = None) -> None:
        """Run ``job`` every ``seconds``, and at once whenever ``wake`` is set (new work for it)."""
        if wake is not None:
            self._wakes.append(wake)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    job()
                except Exception:
                    log.exception("edge background job failed")
                if wake is None:
                    self._stop.wait(seconds)
                else:
                    # Cleared before the next run, which then sees whatever set it.
                    wake.wait(seconds)
                    wake.clear()

        threading.Thread(target=loop, name=f"edge-{job.__name__}", daemon=True).start()

    def start(self, host: str = "127.0.0.1", port: int | None = None, status_port: int | None = None) -> None:
        self.replica.sync()
        for extension in self.extensions:
            for _, job, *_ in extension.jobs():
                job()  # once before serving: a fresh worklist if the cloud answers
        self._servers.append(scp.start(self, host, port if port is not None else settings.EDGE_DICOM_PORT))
        status_port = status_port if status_port is not None else settings.EDGE_STATUS_PORT
        if status_port:
            self._servers.append(status.serve(self, "127.0.0.1", status_port))
        self.forwarder.start()
        self._every(settings.EDGE_SYNC_SECONDS, self.replica.sync)
        self._every(settings.EDGE_HEARTBEAT_SECONDS, self.report_to_cloud)
        self._every(settings.EDGE_TIER_SWEEP_SECONDS, self.tier.evict)
        for extension in self.extensions:
            # An extension's job is (period, function) or (period, function, event that wakes it).
            for seconds, job, *wake in extension.jobs():
                self._every(seconds, job, *wake)

    def stop(self) -> None:
        """Stop accepting associations, let the forwarder finish its requests, close the outbox."""
        self._stop.set()
        for wake in self._wakes:
            wake.set()
        for server in self._servers:
            server.shutdown()
        self.forwarder.stop()
        self.outbox.close()
