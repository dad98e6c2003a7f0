"""A real Celery worker on the embedded filesystem broker, and pushes relayed from it to a browser socket."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.core import signing
from websockets.sync.client import connect

from pacs_cloud import push
from tests.conftest import web_client

ROOT = Path(__file__).resolve().parents[2]


def broker_options(folder: Path) -> dict[str, str]:
    """The embedded broker's layout under PACS_DATA_DIR (as pacs_cloud.settings makes it)."""
    celery = folder / "celery"
    return {
        "data_folder_in": str(celery / "queue"),
        "data_folder_out": str(celery / "queue"),
        "processed_folder": str(celery / "processed"),
        "control_folder": str(celery / "control"),
    }


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def worker(tmp_path_factory, _asgi_server):
    """``celery worker`` in its own process, on a broker folder of its own, relaying pushes to the live server."""
    data_dir = tmp_path_factory.mktemp("worker-data")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(
        PACS_DATA_DIR=str(data_dir),
        SECRET_KEY=settings.SECRET_KEY,  # relayed pushes are signed with it
        SECURE_HTTPS="0",
        PUSH_RELAY_URL=_asgi_server.url,
    )
    log = open(data_dir / "worker.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pacs_cloud", "worker", "--pool=solo", "--loglevel=INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-I", "tests.pacs_cloud.celery_tasks"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    ready = wait_for(lambda: " ready." in (data_dir / "worker.log").read_text() or process.poll() is not None, 90)
    assert ready and process.poll() is None, (data_dir / "worker.log").read_text()[-3000:]
    # Not the current app: shared tasks of later tests must still resolve to the product's app.
    producer = Celery("test-producer", broker="filesystem://", set_as_current=False)
    producer.conf.broker_transport_options = broker_options(data_dir)
    yield producer, data_dir
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert not (ROOT / "control").exists()  # broadcast tables stay in the data folder


def test_a_worker_process_runs_a_task_from_the_embedded_broker(worker, tmp_path):
    producer, data_dir = worker
    marker = tmp_path / "ran"
    producer.send_task("tests.write_marker", args=[str(marker), "done"])
    assert wait_for(marker.exists), (data_dir / "worker.log").read_text()[-3000:]
    assert marker.read_text() == "done"


def test_a_push_from_the_worker_reaches_the_browser_socket(worker, tenants, live_url):
    producer, data_dir = worker
    user = tenants.a.radiologist
    session = web_client(user).cookies["sessionid"].value
    ws_url = live_url.replace("http://", "ws://") + "/ws/notifications/"
    with connect(ws_url, additional_headers={"Cookie": f"sessionid={session}", "Origin": live_url}) as socket:
        producer.send_task("tests.push_to_user", args=[user.pk, "task.offered", {"study": "CT head"}])
        message = json.loads(socket.recv(timeout=30))
    assert message == {"topic": "task.offered", "data": {"study": "CT head"}}


def test_a_socket_only_gets_its_own_users_pushes(tenants, live_url):
    def open_socket(user):
        session = web_client(user).cookies["sessionid"].value
        url = live_url.replace("http://", "ws://") + "/ws/notifications/"
        return connect(url, additional_headers={"Cookie": f"sessionid={session}", "Origin": live_url})

    with open_socket(tenants.a.radiologist) as mine, open_socket(tenants.b.radiologist) as theirs:
        push.send_now(push.user_group(tenants.b.radiologist.pk), "private", {"n": 1})
        assert json.loads(theirs.recv(timeout=10))["topic"] == "private"
        with pytest.raises(TimeoutError):
            mine.recv(timeout=0.5)


def test_an_anonymous_socket_is_refused(live_url):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    url = live_url.replace("http://", "ws://") + "/ws/notifications/"
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with connect(url, additional_headers={"Origin": live_url}) as socket:
            socket.recv(timeout=5)


def test_the_relay_refuses_unsigned_or_stale_pushes(db):
    client = web_client()
    assert client.post("/internal/push/", {"token": "forged"}).status_code == 400
    wrong_key = signing.dumps({"group": "user.1", "topic": "t", "data": {}}, key="another-key", salt=push.RELAY_SALT)
    assert client.post("/internal/push/", {"token": wrong_key}).status_code == 400
    good = signing.dumps({"group": "user.1", "topic": "t", "data": {}}, salt=push.RELAY_SALT)
    assert client.post("/internal/push/", {"token": good}).status_code == 204
