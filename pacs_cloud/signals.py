"""Receivers: auth groups follow memberships; sign-ins go to the audit trail.

Grants to an institution are written to ``<slug>:<role>`` groups (see
``models.role_group_name``), so group membership must follow memberships.
Sign-in, sign-out, failed sign-in and lockout (django-axes) each write an
audit event, for the browser and the token endpoint alike.
"""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import audit, authcache, push
from .models import ApiToken, AuditEvent, Institution, Membership, User, role_group_name

for _model in (User, ApiToken, Membership, Institution):
    post_save.connect(authcache.forget, sender=_model, dispatch_uid=f"authcache-save-{_model.__name__}")
    post_delete.connect(authcache.forget, sender=_model, dispatch_uid=f"authcache-delete-{_model.__name__}")


@receiver(post_save, sender=Membership)
def sync_group_on_save(sender: type, instance: Membership, **kwargs: Any) -> None:
    group, _ = Group.objects.get_or_create(name=role_group_name(instance.institution, instance.role))
    if instance.is_active:
        instance.user.groups.add(group)
    else:
        instance.user.groups.remove(group)


@receiver(post_delete, sender=Membership)
def sync_group_on_delete(sender: type, instance: Membership, **kwargs: Any) -> None:
    group = Group.objects.filter(name=role_group_name(instance.institution, instance.role)).first()
    if group is not None:
        instance.user.groups.remove(group)


# Open WebSockets follow the session and memberships behind them ---------------


@receiver(post_save, sender=Membership, dispatch_uid="sockets-membership-save")
@receiver(post_delete, sender=Membership, dispatch_uid="sockets-membership-delete")
def sockets_follow_membership(sender: type, instance: Membership, **kwargs: Any) -> None:
    push.access_changed(instance.user_id)


@receiver(post_save, sender=User, dispatch_uid="sockets-user-save")
def sockets_end_with_account(sender: type, instance: User, created: bool, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        push.end_sessions(instance.pk)


@receiver(user_logged_out, dispatch_uid="sockets-logout")
def sockets_end_with_session(sender: type, request: Any, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if user is not None and session is not None and session.session_key:
        push.end_sessions(user.pk, session.session_key)


# Sign-in events for the audit trail ------------------------------------------


def _channel(request: Any) -> str:
    path = getattr(request, "path", "") or ""
    return "api" if path.startswith("/api/") else "web"


@receiver(user_logged_in)
def audit_login(sender: type, request: Any, user: Any, **kwargs: Any) -> None:
    audit.record("auth.login", request=request, actor=user, detail={"via": _channel(request)})


@receiver(user_logged_out)
def audit_logout(sender: type, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        audit.record("auth.logout", request=request, actor=user, detail={"via": _channel(request)})


@receiver(user_login_failed)
def audit_login_failed(sender: type, credentials: dict, request: Any = None, **kwargs: Any) -> None:
    # Axes has already counted this failure (its receiver connects first) and
    # marked the request when the account is now, or still, locked. A DRF
    # request would authenticate again when the audit reads its user.
    request = getattr(request, "_request", request)
    locked = bool(getattr(request, "axes_locked_out", False))
    audit.record(
        "auth.login.failed",
        request=request,
        actor_label=str(credentials.get("username", ""))[:150],
        outcome=AuditEvent.Outcome.DENIED,
        detail={"via": _channel(request), "locked_out": locked},
    )


@receiver(user_locked_out)
def audit_lockout(sender: Any, request: Any, username: str, ip_address: str, **kwargs: Any) -> None:
    audit.record(
        "auth.lockout",
        request=request,
        actor_label=(username or "")[:150],
        address=ip_address or "",
        outcome=AuditEvent.Outcome.DENIED,
        detail={"via": _channel(request), "failure_limit": settings.AXES_FAILURE_LIMIT},
    )
