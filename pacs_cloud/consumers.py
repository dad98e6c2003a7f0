"""The notifications WebSocket: ``/ws/notifications/``."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import access
from .push import institution_group, user_group


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    """Joins the signed-in user's own and institution-role groups; relays pushes."""

    groups: list[str] = []

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.joined = await self._groups_for(user)
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def push_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"topic": event["topic"], "data": event["data"]})

    @database_sync_to_async
    def _groups_for(self, user: Any) -> list[str]:
        groups = [user_group(user.pk)]
        for institution_id, role in access.memberships(user).values_list("institution_id", "role"):
            groups.append(institution_group(institution_id, role))
        return groups
