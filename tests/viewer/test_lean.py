"""The lean path: bearer-token requests for one rendered frame, through the ASGI application."""

from __future__ import annotations

import gc
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from pacs_cloud import authcache
from pacs_cloud.actions import do_revoke_token
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import ApiToken, AuditEvent, Membership
from viewer import lean
from viewer.lean import lean_http

from ..conftest import api_client
from .conftest import store_sample
from .test_rendered import frame_url, instance_url

# Django's ASGI handler runs each request's database work in a thread of its
# own, so the rows the tests make must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_memo():
    authcache.forget()
    yield
    authcache.forget()


@pytest.fixture(scope="module")
def application():
    # The web server's HTTP composition (pacs_cloud.asgi), without its WebSocket side.
    yield lean_http(get_asgi_application())
    # Connections opened by the handler's per-request threads close when collected.
    gc.collect()


@pytest.fixture
def ct(tenants, tmp_path):
    return store_sample("CT_small.dcm", tenants.a.institution, tmp_path)


def get(application, url: str, key: str | None) -> tuple[int, dict[str, str], bytes]:
    path, _, query = url.partition("?")
    headers = [(b"host", b"testserver"), (b"accept", b"image/jpeg")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def run() -> tuple[dict, bytes]:
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(10)
        body = b""
        while True:
            message = await communicator.receive_output(10)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.wait(10)
        return start, body

    start, body = async_to_sync(run)()
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def test_it_answers_a_bearer_frame_with_the_full_views_image(application, ct, tenants):
    _, key = issue_token(tenants.a.radiologist)
    status, headers, body = get(application, frame_url(ct) + "?quality=90", key)
    assert status == 200
    assert "server-timing" in headers  # answered on the lean path
    full = api_client(tenants.a.radiologist).get(frame_url(ct) + "?quality=90", HTTP_ACCEPT="image/jpeg")
    assert full.status_code == 200
    assert body == full.content
    assert headers["content-type"] == "image/jpeg"
    assert headers["etag"] == full["ETag"]


def test_an_instance_thumbnail_takes_the_lean_path_too(application, ct, tenants):
    _, key = issue_token(tenants.a.radiologist)
    status, headers, _ = get(application, instance_url(ct, "thumbnail"), key)
    assert status == 200 and "server-timing" in headers


def test_an_already_rendered_frame_needs_no_database_query_or_thread(application, ct, tenants, monkeypatch):
    _, key = issue_token(tenants.a.radiologist)
    first = get(application, frame_url(ct), key)
    queries, hops = [], []
    execute = CursorWrapper._execute
    monkeypatch.setattr(CursorWrapper, "_execute", lambda self, *a, **k: queries.append(a) or execute(self, *a, **k))
    monkeypatch.setattr(lean, "sync_to_async", lambda *a, **k: hops.append(a) or sync_to_async(*a, **k))
    again = get(application, frame_url(ct), key)
    assert again[0] == 200 and again[2] == first[2]
    assert queries == [] and hops == []


def test_the_opening_is_audited_once_for_many_frames(application, ct, tenants):
    _, key = issue_token(tenants.a.radiologist)
    for query in ("", "?quality=50", "?quality=60"):
        assert get(application, frame_url(ct) + query, key)[0] == 200
    views = AuditEvent.objects.filter(action="study.view", object_id=str(ct.series.study.pk))
    assert views.count() == 1
    assert views.get().actor_id == tenants.a.radiologist.pk


def test_it_refuses_a_revoked_token_at_once(application, ct, tenants):
    token, key = issue_token(tenants.a.radiologist)
    assert get(application, frame_url(ct), key)[0] == 200
    do_revoke_token(token, acting_user=tenants.a.radiologist)
    status, headers, _ = get(application, frame_url(ct), key)
    assert status == 401
    assert "server-timing" in headers  # refused by the lean handler's own fallback


def test_a_revocation_made_elsewhere_is_seen_within_the_auth_cache_time(application, ct, tenants, settings):
    settings.AUTH_CACHE_SECONDS = 0.3
    token, key = issue_token(tenants.a.radiologist)
    assert get(application, frame_url(ct), key)[0] == 200
    # Another web process revokes it: this process's memo is not told.
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    time.sleep(0.35)
    assert get(application, frame_url(ct), key)[0] == 401


def test_a_membership_removed_elsewhere_is_seen_within_the_auth_cache_time(application, ct, tenants, settings):
    settings.AUTH_CACHE_SECONDS = 0.3
    _, key = issue_token(tenants.a.radiologist)
    assert get(application, frame_url(ct), key)[0] == 200
    Membership.objects.filter(user=tenants.a.radiologist).delete()  # a queryset delete sends no signal
    time.sleep(0.35)
    assert get(application, frame_url(ct), key)[0] == 404


def test_an_outsider_gets_404_as_for_a_missing_frame(application, ct, tenants):
    _, key = issue_token(tenants.c.radiologist)
    assert get(application, frame_url(ct), key)[0] == 404
    _, own = issue_token(tenants.a.radiologist)
    missing = frame_url(ct).replace(ct.sop_instance_uid, ct.sop_instance_uid + ".9")
    assert get(application, missing, own)[0] == 404
    assert get(application, frame_url(ct, frame=2), own)[0] == 404


def test_several_frames_are_answered_by_the_full_view(application, ct, tenants):
    _, key = issue_token(tenants.a.radiologist)
    status, headers, body = get(application, frame_url(ct, frame="1,1"), key)
    assert status == 200
    assert headers["content-type"].startswith("multipart/related")
    assert body.count(b"Content-Type: image/jpeg") == 2


def test_a_request_without_a_bearer_token_takes_the_full_path(application, ct):
    status, headers, _ = get(application, frame_url(ct), None)
    assert status in (401, 403)
    assert "server-timing" not in headers
