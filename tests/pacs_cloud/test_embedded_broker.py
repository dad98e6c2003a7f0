"""The embedded broker under concurrent producers and a consumer: every message arrives whole, once."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from queue import Empty

import pytest
from django.conf import settings
from kombu import Connection

PRODUCERS = 4
MESSAGES_EACH = 100
# Large enough that a message file is written in more than one step.
BODY = "张三 " * 8_000


def options(folder: Path) -> dict[str, str]:
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


TRANSPORT = os.environ.get("TEST_BROKER_TRANSPORT", "pacs_cloud.lib.fsbroker:Transport")


def connection(folder: Path) -> Connection:
    return Connection("filesystem://", transport=TRANSPORT, transport_options=options(folder))


def produce(folder: str, producer: int) -> None:
    with connection(Path(folder)) as conn:
        queue = conn.SimpleQueue("tasks")
        for n in range(MESSAGES_EACH):
            queue.put({"producer": producer, "n": n, "body": BODY})
        queue.close()


def test_the_embedded_default_is_the_atomic_filesystem_transport():
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")}
    env["PACS_DATA_DIR"] = str(Path(settings.DATA_DIR) / "embedded-broker")
    answer = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.CELERY_BROKER_TRANSPORT)"],
        env={**env, "DJANGO_SETTINGS_MODULE": "pacs_cloud.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == "pacs_cloud.lib.fsbroker:Transport"


@pytest.fixture
def folder(tmp_path):
    for sub in ("queue", "processed", "control"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_concurrent_producers_lose_nothing_and_the_consumer_never_chokes(folder):
    context = multiprocessing.get_context("spawn")
    producers = [context.Process(target=produce, args=(str(folder), p)) for p in range(PRODUCERS)]
    for process in producers:
        process.start()
    received: list[tuple[int, int]] = []
    with connection(folder) as conn:
        queue = conn.SimpleQueue("tasks")
        # Consume while the producers write: a half-written file must never be read.
        while len(received) < PRODUCERS * MESSAGES_EACH:
            try:
                message = queue.get(timeout=30 if not any(p.is_alive() for p in producers) else 0.001)
            except Empty:
                if any(p.is_alive() for p in producers):
                    continue
                break
            payload = message.payload
            assert payload["body"] == BODY
            received.append((payload["producer"], payload["n"]))
            message.ack()
        queue.close()
    for process in producers:
        process.join(30)
        assert process.exitcode == 0
    assert sorted(received) == [(p, n) for p in range(PRODUCERS) for n in range(MESSAGES_EACH)]
    assert not list((folder / "queue").iterdir())
    assert not (folder / "rejected").exists()


def test_an_unreadable_message_file_is_set_aside_not_fatal(folder):
    (folder / "queue" / "00000000000000001_x.unreadable.msg").write_bytes(b"")
    with connection(folder) as conn:
        # A queue of its own: kombu remembers declared exchanges per process, not per folder.
        queue = conn.SimpleQueue("unreadable")
        queue.put({"n": 1})
        assert queue.get(timeout=5).payload == {"n": 1}
        queue.close()
    assert [p.name for p in (folder / "rejected").iterdir()] == ["00000000000000001_x.unreadable.msg"]
