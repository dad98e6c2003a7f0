"""Tasks a test worker imports (``celery worker -I tests.pacs_cloud.celery_tasks``)."""

from pathlib import Path

from celery import shared_task

from pacs_cloud import push


@shared_task(name="tests.write_marker")
def write_marker(path: str, text: str) -> None:
    Path(path).write_text(text)


@shared_task(name="tests.push_to_user")
def push_to_user(user_pk: int, topic: str, data: dict) -> None:
    # Outside any transaction notify() sends at once; from a worker with the
    # in-memory channel layer that means the relay to the web server.
    push.notify(push.user_group(user_pk), topic, data)
