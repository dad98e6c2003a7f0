"""Live pushes to browsers over WebSockets.

``notify(group, topic, data)`` delivers after the current transaction commits
to every socket in ``group``. Groups are ``user.<user pk>`` and
``institution.<institution id>.<role>``; a socket joins its user's groups when
it connects (``pacs_cloud.consumers``).

With the in-memory channel layer (the embedded demo) a layer reaches only its
own process, so a push that starts in the worker or the DICOM service is
relayed to the web server over HTTP, signed with the SECRET_KEY.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import requests
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core import signing
from django.db import transaction

from .lib.asyncio_bridge import block_on

log = logging.getLogger(__name__)

RELAY_SALT = "pacs_cloud.push.relay"
# Socket events other processes may ask the web server to deliver.
RELAYED_EVENTS = {"session.ended", "access.changed"}
# Set by the ASGI application: pushes from this process need no relay.
IN_WEB_PROCESS = False


def user_group(user_pk: object) -> str:
    return f"user.{user_pk}"


def institution_group(institution_id: object, role: str) -> str:
    return f"institution.{institution_id}.{role}"


def notify(group: str, topic: str, data: dict[str, Any]) -> None:
    """Push ``{"topic": topic, "data": data}`` to ``group`` once the transaction commits."""
    transaction.on_commit(lambda: send_now(group, topic, data))


def notify_many(groups: list[str], topic: str, data: dict[str, Any]) -> None:
    """``notify`` to several groups at once: one after-commit hook and one relay for all."""
    if groups:
        transaction.on_commit(lambda: send_now_many(list(groups), topic, data))


def send_now_many(groups: list[str], topic: str, data: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer) and not IN_WEB_PROCESS:
        _relay(groups, topic, data)
        return

    async def send_all() -> None:
        for group in groups:
            await layer.group_send(group, _message(group, topic, data))

    block_on(send_all)


def send_now(group: str, topic: str, data: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer) and not IN_WEB_PROCESS:
        _relay(group, topic, data)
        return
    block_on(layer.group_send, group, _message(group, topic, data))


def _message(group: str, topic: str, data: dict[str, Any]) -> dict[str, Any]:
    # The group rides along: a socket that has just left it drops what was already queued.
    return {"type": "push.message", "group": group, "topic": topic, "data": data}


# Telling open sockets that their authority changed ----------------------------


def session_tag(session_key: str) -> str:
    """A name for a session that does not reveal its key (the key signs a browser in)."""
    return hashlib.sha256(f"{settings.SECRET_KEY}:{session_key}".encode()).hexdigest()[:32]


def end_sessions(user_pk: object, session_key: str | None = None) -> None:
    """Close ``user_pk``'s sockets of one session (all when None) once the transaction commits."""
    event = {"type": "session.ended", "session": session_tag(session_key) if session_key else None}
    transaction.on_commit(lambda: send_event(user_group(user_pk), event))


def access_changed(user_pk: object) -> None:
    """Make ``user_pk``'s sockets re-read their memberships once the transaction commits."""
    transaction.on_commit(lambda: send_event(user_group(user_pk), {"type": "access.changed"}))


def send_event(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer) and not IN_WEB_PROCESS:
        _relay(group, "", {}, event=event)
        return
    block_on(layer.group_send, group, event)


def _relay(group: str | list[str], topic: str, data: dict[str, Any], *, event: dict[str, Any] | None = None) -> None:
    if not settings.PUSH_RELAY_URL:
        return
    message: dict[str, Any] = {"group": group, "topic": topic, "data": data}
    if event is not None:
        message["event"] = event
    token = signing.dumps(message, salt=RELAY_SALT)
    try:
        requests.post(f"{settings.PUSH_RELAY_URL}/internal/push/", data={"token": token}, timeout=2)
    except requests.RequestException as exc:  # a missed push is redrawn on the next page load
        log.info("push relay to the web server failed: %s", exc)


def accept_relay(token: str) -> bool:
    """Deliver a relayed push inside the web process; False if the token is bad."""
    try:
        message = signing.loads(token, salt=RELAY_SALT, max_age=60)
    except signing.BadSignature:
        return False
    if "event" in message:
        if message["event"].get("type") not in RELAYED_EVENTS:
            return False
        send_event(message["group"], message["event"])
    elif isinstance(message["group"], list):
        send_now_many(message["group"], message["topic"], message["data"])
    else:
        send_now(message["group"], message["topic"], message["data"])
    return True
