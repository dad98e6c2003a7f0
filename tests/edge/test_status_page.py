"""The edge's status page: its times are in UTC and say so (the edge belongs to no institution's zone)."""

from __future__ import annotations

import datetime as dt

from archive.edge.status import _page

QUARANTINED = dt.datetime(2026, 12, 7, 6, 3, 5, tzinfo=dt.UTC).timestamp()


def test_the_status_page_labels_its_times_as_utc():
    report = {
        "ae_title": "EDGE1",
        "last_sync_at": "2026-12-07T14:03:05+08:00",
        "outbox_depth": 3,
    }
    page = _page(report, [("1.2.3.4", "1.2.3", "patient ID clash", QUARANTINED)])
    assert page.count("2026-12-07 06:03:05 UTC") == 2
    assert "+08:00" not in page and "T14:03" not in page
    assert "<td>3</td>" in page and "EDGE1" in page


def test_the_status_page_says_when_the_worklist_never_synced():
    page = _page({"last_sync_at": None}, [])
    assert "<th>last sync at</th><td>—</td>" in page


def test_the_status_page_is_served_with_a_content_security_policy(tmp_path):
    import urllib.error
    import urllib.request

    from archive.edge.gateway import Gateway
    from archive.edge.status import serve
    from tests.conftest import free_port

    gateway = Gateway(data_dir=tmp_path, cloud_url="http://127.0.0.1:9", token="unused")
    port = free_port()
    server = serve(gateway, "127.0.0.1", port)
    try:
        answers = []
        for path in ("/", "/status.json", "/no-such-page"):
            try:
                answers.append(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5))
            except urllib.error.HTTPError as refused:
                answers.append(refused)
        assert [a.status for a in answers] == [200, 200, 404]
        for answer in answers:
            policy = answer.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Frame-Options"] == "DENY"
    finally:
        server.shutdown()
        server.server_close()
        gateway.outbox.close()
