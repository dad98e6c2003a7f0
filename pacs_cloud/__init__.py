"""Cloud PACS project package: settings, URLs, ASGI and Celery, and the
bottom layer every app stands on — tenancy (users, institutions,
memberships and roles), the access policy, bearer tokens, the audit trail and
the state-transition log."""

from .celery import app as celery_app

__all__ = ["celery_app"]
