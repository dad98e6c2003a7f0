"""Health probes behind ``GET /healthz``: one real round trip per dependency.

Each probe returns a small dict of facts or raises; :func:`run_checks` times
them and turns exceptions into ``{"status": "error"}`` so one broken
dependency never hides the state of the others. Probes write and read back a
token rather than only opening a connection, so a full disk, a read-only
bucket or a broker that accepts connections but not messages shows up too.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import connection
from django.utils.module_loading import import_string

PROBE_TIMEOUT = 3.0  # seconds per dependency; a load balancer polls often


def _write_read_delete(folder: Path) -> None:
    """Create, fsync, read back and remove a probe file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    path = folder / f".healthz-{os.getpid()}-{token}"
    try:
        with open(path, "w") as handle:
            handle.write(token)
            handle.flush()
            os.fsync(handle.fileno())
        if path.read_text() != token:
            raise OSError(f"probe file in {folder} read back wrong")
    finally:
        path.unlink(missing_ok=True)


def probe_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        if cursor.fetchone() != (1,):
            raise RuntimeError("SELECT 1 returned something else")
    return {"vendor": connection.vendor}


def probe_storage() -> dict[str, Any]:
    """The object store behind ``STORAGE_URL``: a file round trip, or the bucket's HEAD on S3."""
    parsed = urlparse(settings.STORAGE_URL)
    if parsed.scheme == "file":
        _write_read_delete(Path(parsed.path))
        return {"backend": "filesystem"}
    if parsed.scheme == "s3":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=settings.S3_ENDPOINT_URL or None,
            aws_access_key_id=settings.AWS_ACCESS_KEY_ID or None,
            aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY or None,
            region_name=settings.AWS_DEFAULT_REGION,
            config=Config(connect_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT, retries={"max_attempts": 1}),
        )
        client.head_bucket(Bucket=parsed.netloc)
        return {"backend": "s3", "bucket": parsed.netloc}
    raise ValueError(f"unsupported STORAGE_URL scheme {parsed.scheme!r}")


def probe_broker() -> dict[str, Any]:
    """The Celery broker: the queue folders of the embedded broker, or a real connection."""
    from .celery import app

    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        _write_read_delete(Path(str(options["data_folder_in"])))
        return {"transport": "filesystem"}
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT)
        client = getattr(conn.default_channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()
        return {"transport": conn.transport.driver_type}


def probe_channel_layer() -> dict[str, Any]:
    """Send a message to a fresh channel and receive it back."""
    import asyncio

    from channels.layers import get_channel_layer

    from .lib.asyncio_bridge import block_on

    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    token = secrets.token_hex(8)

    async def round_trip() -> Any:
        channel = await layer.new_channel("healthz.")
        await layer.send(channel, {"type": "healthz", "token": token})
        return await asyncio.wait_for(layer.receive(channel), PROBE_TIMEOUT)

    message = block_on(round_trip)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned another message")
    return {"backend": type(layer).__name__}


def probe_redis() -> dict[str, Any]:
    """Redis itself (cache, channel layer, usually the broker): a key round trip."""
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT
    )
    key = f"{settings.REDIS_KEY_PREFIX}:healthz:{secrets.token_hex(8)}"
    try:
        client.set(key, "1", ex=30)
        if client.get(key) != b"1":
            raise RuntimeError("Redis returned another value")
    finally:
        client.delete(key)
        client.close()
    return {}


def probes() -> dict[str, Callable[[], dict[str, Any]]]:
    """The dependencies of this deployment, by name.

    ``HEALTH_STORAGE_PROBE`` (a dotted path) lets the storage layer supply a
    probe that uses its own backend instead of the generic one here.
    """
    storage = import_string(settings.HEALTH_STORAGE_PROBE) if settings.HEALTH_STORAGE_PROBE else probe_storage
    checks = {
        "database": probe_database,
        "storage": storage,
        "broker": probe_broker,
        "channel_layer": probe_channel_layer,
    }
    if settings.REDIS_URL:
        checks["redis"] = probe_redis
    return checks


def run_checks() -> dict[str, dict[str, Any]]:
    results = {}
    for name, probe in probes().items():
        started = time.perf_counter()
        try:
            result: dict[str, Any] = {"status": "ok", **(probe() or {})}
        except Exception as exc:  # health reports a failure rather than raising it
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
        result["ms"] = round((time.perf_counter() - started) * 1000, 1)
        results[name] = result
    return results
