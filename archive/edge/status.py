"""The edge's status page (``http://127.0.0.1:EDGE_STATUS_PORT/``, JSON at ``/status.json``).

For the hospital's staff at the edge: how many images wait for the cloud,
since when, whether the cloud answers, what it refused (the quarantine,
with reasons) and how full the online tier is. It shows UIDs and counts,
never patient names.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gateway import Gateway


def _utc(at: float | str | None) -> str:
    """A time on this page: ``2026-12-07 06:03:05 UTC``.

    The edge belongs to no institution whose zone the page could use, so its
    times are in UTC and say so. ``at`` is a Unix time or an ISO 8601 string
    with an offset; anything else is shown as it is.
    """
    if at is None or at == "":
        return "—"
    if isinstance(at, str):
        try:
            parsed = dt.datetime.fromisoformat(at)
        except ValueError:
            return at
        if parsed.tzinfo is None:
            return at
        at = parsed.timestamp()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + " UTC"


def _fact(key: str, value: Any) -> str:
    return _utc(value) if key.endswith("_at") else str(value)


def _page(report: dict[str, Any], quarantine: list[tuple]) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(uid)}</code></td><td><code>{html.escape(study)}</code></td>"
        f"<td>{html.escape(reason)}</td><td>{_utc(at)}</td></tr>"
        for uid, study, reason, at in quarantine
    )
    facts = "".join(
        f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td>{html.escape(_fact(k, v))}</td></tr>"
        for k, v in report.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Cloud PACS edge</title></head><body>"
        f"<h1>Cloud PACS edge gateway</h1><table id='status'>{facts}</table>"
        "<h2>Quarantine</h2><p>Images the cloud refused for good; they stay here until resolved.</p>"
        "<table id='quarantine'><tr><th>SOP Instance UID</th><th>Study</th><th>Reason</th><th>Since</th></tr>"
        f"{rows or '<tr><td colspan=4>Nothing quarantined.</td></tr>'}</table></body></html>"
    )


# The page is plain HTML with no script, style sheet or image of its own: the
# policy allows nothing, so even a reason text that slipped past escaping runs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def serve(gateway: Gateway, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def end_headers(self) -> None:
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
            report = gateway.report()
            if self.path.startswith("/status.json"):
                items = [
                    dict(zip(("sop_instance_uid", "study_instance_uid", "reason", "at"), r, strict=True))
                    for r in gateway.outbox.quarantined()
                ]
                body = json.dumps({**report, "quarantine": items}).encode()
                kind = "application/json"
            elif self.path in ("/", "/index.html"):
                body = _page(report, gateway.outbox.quarantined()).encode()
                kind = "text/html; charset=utf-8"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="edge-status", daemon=True).start()
    return server
