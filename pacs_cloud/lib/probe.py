"""Container health checks (docker/compose.yaml, docker/edge.yaml), without starting Django.

    python -m pacs_cloud.lib.probe http http://127.0.0.1:8000/healthz
    python -m pacs_cloud.lib.probe tcp 127.0.0.1 11112
    python -m pacs_cloud.lib.probe fresh '/data/celerybeat-schedule*' 600

Exit status 0 when healthy. The HTTP probe names the first of ``ALLOWED_HOSTS``
as its host and says it came through the TLS proxy, as a real request does,
so a production configuration answers it instead of refusing the host or
redirecting to HTTPS.
"""

from __future__ import annotations

import glob
import http.client
import os
import socket
import sys
import time
from urllib.parse import urlsplit


def http_ok(url: str, timeout: float = 8) -> bool:
    parts = urlsplit(url)
    hosts = [h.strip().lstrip(".") for h in os.environ.get("ALLOWED_HOSTS", "").split(",")]
    host = next((h for h in hosts if h and "*" not in h), parts.netloc)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/", headers={"Host": host, "X-Forwarded-Proto": "https"})
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def tcp_ok(host: str, port: int, timeout: float = 5) -> bool:
    try:
        socket.create_connection((host, port), timeout).close()
    except OSError:
        return False
    return True


def fresh(pattern: str, seconds: float) -> bool:
    """Some file matching ``pattern`` changed within ``seconds`` (celery beat saves its schedule every few minutes)."""
    now = time.time()
    return any(now - os.path.getmtime(path) < seconds for path in glob.glob(pattern))


def main(argv: list[str]) -> int:
    kind, *args = argv
    if kind == "http":
        healthy = http_ok(args[0])
    elif kind == "tcp":
        healthy = tcp_ok(args[0], int(args[1]))
    elif kind == "fresh":
        healthy = fresh(args[0], float(args[1]))
    else:
        raise SystemExit(f"unknown probe {kind!r}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
