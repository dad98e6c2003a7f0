"""Serve the cloud's DICOM services: ``manage.py dicom_server``."""

from __future__ import annotations

import gc
import signal
import socket
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from archive import dimse_processes
from archive.dimse import start_server


class Command(BaseCommand):
    help = "Serve C-ECHO and the DICOM services of every app on the cloud AE."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--ae-title", default=settings.DICOM_AE_TITLE)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.DICOM_PORT)
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.DICOM_SERVICE_PROCESSES,
            help="service processes sharing the port (default: DICOM_SERVICE_PROCESSES)",
        )

    def handle(self, *args: Any, ae_title: str, host: str, port: int, processes: int, **options: Any) -> None:
        if processes > 1:
            self._serve_in_processes(ae_title, host, port, processes)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        server = start_server(ae_title, host, port)
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's way. pynetdicom collects garbage every 60 connections,
        # which would otherwise walk Django's and pydicom's objects each time.
        gc.freeze()
        self.stdout.write(f"DICOM services of {ae_title} on {host}:{port}")
        stop.wait()
        # Stop accepting; associations in progress finish their current request.
        server.shutdown()
        self.stdout.write("DICOM services stopped")

    def _serve_in_processes(self, ae_title: str, host: str, port: int, processes: int) -> None:
        listening = dimse_processes.listen(host, port)

        def serve(
            index: int, counts: dimse_processes.SharedCounts, channel: socket.socket, stop: threading.Event
        ) -> None:
            def prepare(server: Any) -> None:
                dimse_processes.install(server, counts, index, settings.DICOM_MAX_ASSOCIATIONS_PER_PEER)

            server = start_server(ae_title, host, port, handoff=channel, prepare=prepare)
            gc.freeze()
            stop.wait()
            server.shutdown()

        self.stdout.write(f"DICOM services of {ae_title} on {host}:{port} in {processes} processes")
        self.stdout.flush()
        dimse_processes.serve_in_processes(processes, listening, serve)
        self.stdout.write("DICOM services stopped")
