"""The product's DICOM service, ``manage.py dicom_server``, started as a process of its own for a test.

It runs on the test database and storage, so what it stores is seen by the
test; each caller decides how the process ends (terminated, or killed to test
a crash).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from tests.conftest import database_url, free_port

ROOT = Path(__file__).resolve().parents[1]


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, "the DICOM service did not start listening"
        time.sleep(0.1)


def start_dicom_service(folder: Path, *args: str, **env: str) -> tuple[subprocess.Popen, int, Path]:
    """Start the service on a free port and wait until it listens: its process, port and log.

    ``args`` are added to the command line and ``env`` to its environment; its
    data and log are kept in ``folder``. Without Redis or a broker it works alone.
    """
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    environment.update(
        DATABASE_URL=database_url(),
        PACS_DATA_DIR=str(folder / "service"),
        STORAGE_URL=settings.STORAGE_URL,
        DJANGO_SETTINGS_MODULE="pacs_cloud.settings",
        LOG_LEVEL="WARNING",
        **env,
    )
    log = folder / "dicom_server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_server", "--port", str(port), *args],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(port, process, log)
    except BaseException:
        process.kill()
        process.wait(timeout=30)
        raise
    return process, port, log
