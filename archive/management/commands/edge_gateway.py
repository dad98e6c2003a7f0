"""Run the edge gateway: ``PACS_ROLE=edge CLOUD_URL=… EDGE_TOKEN=… manage.py edge_gateway``."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from archive.edge.gateway import Gateway


class Command(BaseCommand):
    help = "Serve the edge AE (C-ECHO, C-STORE, worklist, query/retrieve) and forward every image to the cloud."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--ae-title", default=settings.EDGE_AE_TITLE)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.EDGE_DICOM_PORT)
        parser.add_argument("--status-port", type=int, default=settings.EDGE_STATUS_PORT)

    def handle(self, *args: Any, ae_title: str, host: str, port: int, status_port: int, **options: Any) -> None:
        if settings.PACS_ROLE != "edge":
            raise CommandError("set PACS_ROLE=edge to run the edge gateway")
        if not settings.EDGE_TOKEN:
            raise CommandError("set EDGE_TOKEN to the token the cloud gave when the edge was enrolled")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        gateway = Gateway(ae_title=ae_title)
        gateway.start(host, port, status_port)
        self.stdout.write(f"Edge gateway {ae_title} on {host}:{port}, forwarding to {settings.CLOUD_URL}")
        self.stdout.flush()
        stop.wait()
        gateway.stop()
        self.stdout.write("Edge gateway stopped")
