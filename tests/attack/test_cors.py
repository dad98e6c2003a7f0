"""A web viewer on another origin reads DICOMweb when, and only when, its origin is allowed.

Chromium loads a page from a server of its own (another port: another
origin) whose script calls our DICOMweb with a bearer token, which makes the
browser send a pre-flight first. From the allowed origin the search
succeeds; from a refused one (the same page under another host name) the
browser blocks it.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from pacs_cloud.authentication import issue_token
from tests.conftest import free_port

PAGE = b"<!doctype html><title>Viewer elsewhere</title><p>A viewer served from its own origin."
FETCH = """async ([url, token]) => {
    try {
        const response = await fetch(url, {headers: {Authorization: "Bearer " + token, Accept: "application/dicom+json"}});
        return {status: response.status, body: await response.text()};
    } catch (error) {
        return {error: String(error)};
    }
}"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def page_port():
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()


def preflight(url: str, origin: str, headers: str = "authorization") -> requests.Response:
    return requests.options(
        url,
        headers={"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": headers},
        timeout=10,
    )


def test_a_viewer_on_an_allowed_origin_searches_and_others_are_refused(
    live_url, tenants, settings, browser_context, page_port
):
    allowed, refused = f"http://127.0.0.1:{page_port}", f"http://localhost:{page_port}"
    settings.CORS_ALLOWED_ORIGINS = [allowed]
    _, token = issue_token(tenants.a.radiologist)
    url = f"{live_url}/dicomweb/studies"

    page = browser_context().new_page()
    page.goto(f"{allowed}/")
    found = page.evaluate(FETCH, [url, token])
    assert found.get("status") == 200, found
    assert found["body"].startswith("[")

    page.goto(f"{refused}/")
    blocked = page.evaluate(FETCH, [url, token])
    assert "Failed to fetch" in blocked.get("error", ""), blocked

    # The pre-flights themselves, as the browser sent them: no credentials.
    answered = preflight(url, allowed)
    assert answered.status_code == 204
    assert answered.headers["Access-Control-Allow-Origin"] == allowed
    assert "authorization" in answered.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in answered.headers
    for origin, headers in ((refused, "authorization"), (allowed, "x-made-up")):
        refusal = preflight(url, origin, headers)
        assert refusal.status_code == 403 and "Access-Control-Allow-Origin" not in refusal.headers
    assert preflight(f"{live_url}/api/v1/studies/", allowed).status_code == 204
    # Same-origin pages and clients that send no Origin are not affected.
    plain = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert plain.status_code == 200 and "Access-Control-Allow-Origin" not in plain.headers


def test_no_origin_is_allowed_unless_configured(live_url, settings):
    assert settings.CORS_ALLOWED_ORIGINS == []
    assert preflight(f"{live_url}/dicomweb/studies", "https://viewer.example.org").status_code == 403
