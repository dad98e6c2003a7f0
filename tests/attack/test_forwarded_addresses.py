"""A client cannot choose its own address with X-Forwarded-For.

The web server runs as the Docker image runs it (its CMD, on the test
database). Without a configured proxy, eight wrong passwords sent under
eight made-up forwarded addresses still come from one peer: the account
locks and the audit trail names the real peer. With the proxy configured
(``TRUSTED_PROXIES``), the hop it adds is believed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from axes.models import AccessAttempt

from pacs_cloud.models import AuditEvent
from tests.conftest import PASSWORD, database_url, free_port

ROOT = Path(__file__).resolve().parents[2]
USER = "clinician@alpha"


def image_web_command() -> list[str]:
    """The Docker image's CMD (exec form)."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    return json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))


class WebServer:
    """The image's web command on 127.0.0.1 and a free port, as a process of its own."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        command = image_web_command()
        assert command[0] == "uvicorn"
        self.port = free_port()
        args = command[1:]
        args[args.index("--host") + 1] = "127.0.0.1"
        args[args.index("--port") + 1] = str(self.port)
        environment = {
            k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "TRUSTED_PROXIES")
        }
        environment.update(
            DATABASE_URL=database_url(), DB_CONN_MAX_AGE="0", PACS_DATA_DIR=str(data_dir), LOG_LEVEL="WARNING", **env
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir / "web.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *args],
            cwd=ROOT,
            env=environment,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self) -> WebServer:
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert time.monotonic() < deadline, "the web server did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def servers(django_db_setup, django_db_blocker, tmp_path_factory):
    """Two web servers at once: one with no proxy configured, one behind a proxy on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("web")
    started = {
        "direct": WebServer(folder / "direct"),
        "behind_proxy": WebServer(folder / "proxied", TRUSTED_PROXIES="127.0.0.1"),
    }
    try:
        yield {name: server.wait() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def get_token(url: str, password: str, forwarded_for: str) -> requests.Response:
    return requests.post(
        f"{url}/api/v1/auth/token/",
        json={"username": USER, "password": password},
        headers={"X-Forwarded-For": forwarded_for},
        timeout=20,
    )


def test_made_up_forwarded_addresses_neither_dodge_the_lockout_nor_reach_the_audit(
    servers, transactional_db, tenants, settings
):
    url = servers["direct"].url
    for n in range(1, 9):
        assert get_token(url, "wrong-password", f"203.0.113.{n}").status_code in (401, 429)
    assert get_token(url, PASSWORD, "203.0.113.9").status_code == 429

    assert [
        (a.ip_address, a.failures_since_start >= settings.AXES_FAILURE_LIMIT) for a in AccessAttempt.objects.all()
    ] == [("127.0.0.1", True)]
    addresses = set(AuditEvent.objects.filter(action__startswith="auth.").values_list("client_address", flat=True))
    assert addresses == {"127.0.0.1"}


def test_behind_the_configured_proxy_the_hop_it_adds_is_the_client(servers, transactional_db, tenants):
    url = servers["behind_proxy"].url
    # The proxy appends the address it saw; what the client wrote before it is not believed.
    assert get_token(url, "wrong-password", "10.9.9.9").status_code == 401
    assert get_token(url, "wrong-password", "198.51.100.7, 10.9.9.8").status_code == 401
    signed_in = get_token(url, PASSWORD, "10.9.9.7")
    assert signed_in.status_code == 201, signed_in.text

    failed = AuditEvent.objects.filter(action="auth.login.failed").order_by("id")
    assert [e.client_address for e in failed] == ["10.9.9.9", "10.9.9.8"]
    assert AuditEvent.objects.get(action="auth.token.issued").client_address == "10.9.9.7"
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) <= {"10.9.9.9", "10.9.9.8"}


def test_the_demo_web_server_leaves_forwarding_headers_to_the_product():
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    web = procfile["web"].split()
    assert "--no-proxy-headers" in web and "--forwarded-allow-ips" not in web
    assert "--no-proxy-headers" in image_web_command()
