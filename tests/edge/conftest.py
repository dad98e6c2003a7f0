"""Fixtures of the edge gateway tests: a cloud that can be stopped and started, and edge processes.

``cloud`` is the real ASGI application served by uvicorn in a thread of the
test process (on the test database), on a port of its own, so a test can
stop it and start it again on the same address. ``edge`` starts
``manage.py edge_gateway`` as a real subprocess with its own data folder,
enrolled for institution ``a``, whose modality ``ALPHA_CT`` may call it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from archive.edge import enrolment
from archive.models import DicomNode
from tests.archive.conftest import storage_dir  # noqa: F401
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


class CloudServer:
    """uvicorn serving the product in a thread; ``stop()`` and ``start()`` keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        from pacs_cloud.asgi import application

        config = uvicorn.Config(application, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the cloud did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            self.server = None


@pytest.fixture
def cloud(transactional_db, storage_dir, settings):  # noqa: F811
    server = CloudServer()
    settings.CLOUD_URL = server.url
    server.start()
    yield server
    server.stop()


class EdgeProcess:
    """``manage.py edge_gateway`` in a subprocess."""

    def __init__(self, data_dir: Path, cloud_url: str, token: str, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.status_port = free_port()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STORAGE_URL")
        }
        self.env.update(
            PACS_ROLE="edge",
            PACS_DATA_DIR=str(data_dir),
            CLOUD_URL=cloud_url,
            EDGE_TOKEN=token,
            EDGE_HEARTBEAT_SECONDS="0.5",
            EDGE_SYNC_SECONDS="0.5",
            EDGE_RETRY_MAX_SECONDS="1",
            TCP_NODELAY="1",
        )
        self.env.update(env)  # a test may set any of the above otherwise
        self.process: subprocess.Popen | None = None

    def start(self) -> EdgeProcess:
        self.log = open(self.data_dir / "edge.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "edge_gateway",
                "--port",
                str(self.port),
                "--status-port",
                str(self.status_port),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.status()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the edge did not start:\n{self.output()}") from None
                time.sleep(0.1)

    def output(self) -> str:
        return (self.data_dir / "edge.log").read_text(errors="replace")

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status.json", timeout=5) as answer:
            return json.load(answer)

    def page(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/", timeout=5) as answer:
            return answer.read().decode()

    def wait_for(self, condition: Callable[[dict], bool], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = self.status()
            if condition(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the edge never got there: {found}\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)
        self.log.close()


@pytest.fixture
def edge_token(tenants, cloud) -> str:
    DicomNode.objects.get_or_create(
        ae_title="ALPHA_CT", defaults={"institution": tenants.a.institution, "host": "127.0.0.1"}
    )
    _, token = enrolment.do_enrol_edge(tenants.a.institution, name="Test edge", acting_user=tenants.a.institution_admin)
    return token


@pytest.fixture
def start_edge(tmp_path, cloud, edge_token):
    """Start (or restart) the edge of institution ``a`` on one data folder."""
    started: list[EdgeProcess] = []
    folder = tmp_path / "edge"
    folder.mkdir()

    def start(**env: str) -> EdgeProcess:
        edge = EdgeProcess(folder, cloud.url, edge_token, **env).start()
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.kill(signal.SIGTERM)
