"""A process without a web server of its own relays pushes only where PUSH_RELAY_URL points."""

from __future__ import annotations

from django.core import signing

from pacs_cloud import push


def test_empty_relay_address_sends_nothing(settings, monkeypatch):
    settings.PUSH_RELAY_URL = ""
    sent = []
    monkeypatch.setattr(push.requests, "post", lambda *a, **k: sent.append(a))
    push._relay("institution-x", "study.updated", {"id": 1})
    assert sent == []


def test_relay_posts_a_signed_message_to_the_web_server(settings, monkeypatch):
    settings.PUSH_RELAY_URL = "http://web.example:8000"
    sent = []
    monkeypatch.setattr(push.requests, "post", lambda url, data, timeout: sent.append((url, data)))
    push._relay("institution-x", "study.updated", {"id": 1})
    [(url, data)] = sent
    assert url == "http://web.example:8000/internal/push/"
    message = signing.loads(data["token"], salt=push.RELAY_SALT)
    assert message == {"group": "institution-x", "topic": "study.updated", "data": {"id": 1}}
