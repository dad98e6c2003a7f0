"""Live worklists: a real WebSocket client sees offers and claims as they happen; two browsers."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from django.db import connection
from django.test import Client
from websockets.sync.client import connect

from tests.conftest import PASSWORD, browser_login
from tests.workflow.conftest import make_study, save_policy
from workflow.actions import do_start_reading_process


def _socket(live_url: str, user):
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    return connect(
        live_url.replace("http", "ws") + "/ws/notifications/",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": live_url},
        open_timeout=10,
    )


def in_worker(fn):
    """Run ``fn`` in another thread, as the Celery worker would (Playwright owns this thread's event loop)."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    return result["value"]


def _next(socket, topic: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message["topic"] == topic:
            return message["data"]
    raise AssertionError(f"no {topic} push")


def test_a_websocket_client_sees_offers_and_claims_live(tenants, centre, live_url):
    save_policy(
        tenants.a.institution,
        {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]},
    )
    first, second, _ = centre.readers
    with _socket(live_url, first) as ws_first, _socket(live_url, second) as ws_second:
        time.sleep(0.2)  # let both sockets join their groups
        task = do_start_reading_process(make_study(tenants.a.institution, patient_name="HIDDEN^NAME")).tasks.get()
        offer = _next(ws_second, "workflow.task.offered")
        assert offer["id"] == str(task.pk)
        assert (offer["hospital"], offer["modality"], offer["body_part"]) == ("Alpha County Hospital", "CT", "HEAD")
        assert "HIDDEN" not in json.dumps(offer)
        assert _next(ws_first, "workflow.task.offered")["id"] == str(task.pk)

        token = requests.post(
            f"{live_url}/api/v1/auth/token/", data={"username": first.username, "password": PASSWORD}, timeout=10
        ).json()["token"]
        claimed = requests.post(
            f"{live_url}/api/v1/reading-tasks/{task.pk}/claim/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert claimed.status_code == 200
        assert _next(ws_second, "workflow.task.withdrawn") == {"id": str(task.pk), "reason": "claimed"}
        assert _next(ws_first, "workflow.task.mine") == {"id": str(task.pk), "state": "claimed"}


@pytest.mark.browser
def test_a_task_claimed_in_one_browser_vanishes_from_the_other(tenants, centre, live_url, browser_context):
    save_policy(
        tenants.a.institution,
        {"rules": [{"name": "Pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]},
    )
    first, second, _ = centre.readers
    pages = []
    for user in (first, second):
        page = browser_login(browser_context(), live_url, user.username)
        page.goto(f"{live_url}/workflow/")
        page.wait_for_selector("#live-status.ok")
        pages.append(page)
    page_first, page_second = pages
    study = make_study(tenants.a.institution, patient_name="HIDDEN^NAME")
    task = in_worker(lambda: do_start_reading_process(study).tasks.get())
    row = f'tr[data-task="{task.pk}"]'
    for page in pages:
        page.wait_for_selector(row)  # arrived live, without a reload
    assert "HIDDEN" not in page_second.inner_text(row)
    assert "Alpha County Hospital" in page_second.inner_text(row)

    page_first.click(f"{row} button.claim")
    page_first.wait_for_url(f"**/viewer/studies/{task.study_id}/")  # claiming opens the study
    page_first.goto(f"{live_url}/workflow/tasks/{task.pk}/")
    assert "HIDDEN, NAME" in page_first.inner_text("#patient")
    page_second.wait_for_selector(row, state="detached", timeout=5000)
    assert page_second.url == f"{live_url}/workflow/"  # no reload happened
