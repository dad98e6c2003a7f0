"""The notifications WebSocket: ``/ws/notifications/``.

A socket holds no more authority than its session: it is closed when the
session ends (sign-out, expiry, the account switched off), and it leaves an
institution's groups as soon as the membership behind them goes
(``pacs_cloud.push.end_sessions`` and ``access_changed``, sent by the
receivers in ``pacs_cloud.signals``). Each push is checked against the session
too, so a missed event cannot keep a socket fed.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.utils.crypto import constant_time_compare

from . import access
from .models import User
from .push import institution_group, session_tag, user_group

# Close codes (4000-4999 are the application's, RFC 6455 7.4.2).
CLOSE_SIGNED_OUT = 4401


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    """Joins the signed-in user's own and institution-role groups; relays pushes."""

    groups: list[str] = []

    async def connect(self) -> None:
        user = self.scope.get("user")
        session = self.scope.get("session")
        if user is None or not user.is_authenticated or session is None or not session.session_key:
            await self.close(code=CLOSE_SIGNED_OUT)
            return
        self.user_pk = user.pk
        self.session_key = session.session_key
        self.joined: list[str] = []
        await self._join(await self._groups_for(user.pk))
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self._leave(getattr(self, "joined", []))

    async def push_message(self, event: dict[str, Any]) -> None:
        if event.get("group") not in self.joined:
            return
        if not await self._still_signed_in():
            await self._end()
            return
        await self.send_json({"topic": event["topic"], "data": event["data"]})

    async def session_ended(self, event: dict[str, Any]) -> None:
        if event.get("session") in (None, session_tag(self.session_key)):
            await self._end()

    async def access_changed(self, event: dict[str, Any]) -> None:
        if not await self._still_signed_in():
            await self._end()
            return
        wanted = await self._groups_for(self.user_pk)
        await self._leave([g for g in self.joined if g not in wanted])
        await self._join([g for g in wanted if g not in self.joined])

    async def _join(self, groups: list[str]) -> None:
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)

    async def _leave(self, groups: list[str]) -> None:
        for group in list(groups):
            await self.channel_layer.group_discard(group, self.channel_name)
            self.joined.remove(group)

    async def _end(self) -> None:
        await self._leave(list(self.joined))
        await self.close(code=CLOSE_SIGNED_OUT)

    @database_sync_to_async
    def _groups_for(self, user_pk: Any) -> list[str]:
        groups = [user_group(user_pk)]
        user = User.objects.filter(pk=user_pk, is_active=True).first()
        if user is None:
            return groups
        for institution_id, role in access.memberships(user).values_list("institution_id", "role"):
            groups.append(institution_group(institution_id, role))
        return groups

    @database_sync_to_async
    def _still_signed_in(self) -> bool:
        """The session still exists, unexpired, for this user, whose password and account are unchanged."""
        store = self.scope["session"].__class__(session_key=self.session_key)
        data = store.load()
        if str(data.get(SESSION_KEY)) != str(self.user_pk):
            return False
        user = User.objects.filter(pk=self.user_pk, is_active=True).first()
        if user is None:
            return False
        return constant_time_compare(data.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash())
