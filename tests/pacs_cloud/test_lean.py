"""Which requests skip the browser middleware: bearer-token reads of the views that ask for it, nothing else."""

from __future__ import annotations

import pytest

from pacs_cloud.lean import takes_lean_path

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
BEARER = [(b"authorization", b"Bearer abc123"), (b"accept", b"application/dicom+json")]


def scope(path: str, method: str = "GET", headers: list | None = None) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": BEARER if headers is None else headers}


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies",
        "/dicomweb/series",
        "/dicomweb/instances",
        f"/dicomweb/studies/{STUDY}/series",
        f"/dicomweb/studies/{STUDY}/instances",
        f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances",
    ],
)
def test_a_bearer_search_takes_the_lean_path(path):
    assert takes_lean_path(scope(path))
    assert takes_lean_path(scope(path, headers=[(b"authorization", b"bearer abc123")]))


def test_a_store_takes_the_full_stack():
    assert not takes_lean_path(scope("/dicomweb/studies", method="POST"))


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"cookie", b"sessionid=abc; csrftoken=def")],
        [],
    ],
)
def test_a_search_without_a_bearer_token_takes_the_full_stack(headers):
    assert not takes_lean_path(scope("/dicomweb/studies", headers=headers))


@pytest.mark.parametrize(
    "path",
    [
        f"/dicomweb/studies/{STUDY}",
        f"/dicomweb/studies/{STUDY}/metadata",
        "/api/v1/studies/",
        "/",
        "/no/such/page",
    ],
)
def test_other_views_take_the_full_stack(path):
    assert not takes_lean_path(scope(path))


def test_websockets_take_the_full_stack():
    assert not takes_lean_path({"type": "websocket", "path": "/dicomweb/studies", "headers": BEARER})
