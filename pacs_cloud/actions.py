"""Multi-step changes to tenancy and tokens (the only place they change).

Callers (views, the API, commands) check that the acting user may act on the
institution first — ``access.access_institution(user, id, Role.INSTITUTION_ADMIN)``
— and pass the institution they got from it. Every action writes its audit
event in the same transaction as the change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from . import audit, authcache
from .authentication import issue_token
from .models import ApiToken, Institution, Membership, Role, User


class ActionError(Exception):
    """The change was refused; ``message`` is shown to the user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# Tokens ------------------------------------------------------------------


def do_issue_token(
    user: User, *, name: str = "", ttl_hours: int | None = None, request: HttpRequest | None = None
) -> tuple[ApiToken, str]:
    """Create a bearer token for ``user``; returns the row and the secret (shown once)."""
    with transaction.atomic():
        token, key = issue_token(user, name=name, ttl_hours=ttl_hours)
        audit.record(
            "auth.token.issued",
            request=request,
            actor=user,
            object_type="api_token",
            object_id=token.pk,
            detail={"name": token.name, "expires_at": token.expires_at.isoformat()},
        )
    return token, key


def do_revoke_token(token: ApiToken, *, acting_user: User, request: HttpRequest | None = None) -> bool:
    """Revoke ``token`` now; False if it was already revoked. The row stays for the record."""
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        authcache.forget()
        if updated:
            audit.record(
                "auth.token.revoked",
                request=request,
                actor=acting_user,
                object_type="api_token",
                object_id=token.pk,
                detail={"owner": token.user.username, "name": token.name},
            )
    token.refresh_from_db(fields=["revoked_at"])
    return bool(updated)


# Members -----------------------------------------------------------------


def _record_member_change(
    action: str,
    institution: Institution,
    member: User,
    acting_user: User,
    request: HttpRequest | None,
    **detail: Any,
) -> None:
    audit.record(
        action,
        request=request,
        actor=acting_user,
        role=Role.INSTITUTION_ADMIN,
        institution=institution,
        object_type="user",
        object_id=member.uuid,
        detail={"username": member.username, **detail},
    )


def do_create_member(
    institution: Institution,
    *,
    username: str,
    password: str,
    roles: Iterable[str],
    display_name: str = "",
    email: str = "",
    acting_user: User,
    request: HttpRequest | None = None,
) -> User:
    """Create a user account holding ``roles`` at ``institution``.

    Raises ``ActionError`` for a taken username or no role, and Django's
    ``ValidationError`` for a password the validators refuse.
    """
    roles = sorted(set(roles))
    if not roles:
        raise ActionError("Give the new member at least one role.")
    if any(role not in Role.values for role in roles):
        raise ActionError("Unknown role.")
    username = username.strip()
    if not username:
        raise ActionError("A username is required.")
    candidate = User(username=username, display_name=display_name, email=email)
    validate_password(password, user=candidate)
    with transaction.atomic():
        if User.objects.filter(username__iexact=username).exists():
            raise ActionError(f"The username {username} is taken.")
        candidate.set_password(password)
        candidate.save()
        for role in roles:
            Membership.objects.create(user=candidate, institution=institution, role=role)
        _record_member_change("member.created", institution, candidate, acting_user, request, roles=roles)
    return candidate


def _active_admins(institution: Institution) -> set[int]:
    return set(
        Membership.objects.filter(
            institution=institution, role=Role.INSTITUTION_ADMIN, is_active=True, user__is_active=True
        ).values_list("user_id", flat=True)
    )


def do_add_role(
    institution: Institution, member: User, role: str, *, acting_user: User, request: HttpRequest | None = None
) -> Membership:
    """Give ``member`` ``role`` at ``institution`` (idempotent; re-activates a dormant role)."""
    if role not in Role.values:
        raise ActionError("Unknown role.")
    with transaction.atomic():
        membership, created = Membership.objects.select_for_update().get_or_create(
            user=member, institution=institution, role=role
        )
        if created:
            _record_member_change("membership.added", institution, member, acting_user, request, role=role)
    return membership


def do_remove_role(membership: Membership, *, acting_user: User, request: HttpRequest | None = None) -> None:
    """Take one role away. The last active administrator of an institution stays."""
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("user", "institution").get(pk=membership.pk)
        institution = locked.institution
        if locked.role == Role.INSTITUTION_ADMIN and _active_admins(institution) == {locked.user_id}:
            raise ActionError("An institution keeps at least one active administrator.")
        locked.delete()
        _record_member_change("membership.removed", institution, locked.user, acting_user, request, role=locked.role)


def do_set_member_roles(
    institution: Institution,
    member: User,
    roles: Iterable[str],
    *,
    acting_user: User,
    request: HttpRequest | None = None,
) -> None:
    """Make ``member``'s roles at ``institution`` exactly ``roles`` (at least one)."""
    wanted = set(roles)
    if not wanted:
        raise ActionError("Keep at least one role, or deactivate the member instead.")
    with transaction.atomic():
        current = {m.role: m for m in Membership.objects.filter(user=member, institution=institution)}
        for role in sorted(wanted - set(current)):
            do_add_role(institution, member, role, acting_user=acting_user, request=request)
        for role in sorted(set(current) - wanted):
            do_remove_role(current[role], acting_user=acting_user, request=request)


def do_set_member_active(
    institution: Institution,
    member: User,
    active: bool,
    *,
    acting_user: User,
    request: HttpRequest | None = None,
) -> None:
    """Suspend or restore every role ``member`` holds at ``institution``.

    The account itself is switched off (which ends its sessions and refuses its
    tokens) only when the member belongs to no other institution: an admin
    never changes what a user may do elsewhere.
    """
    if member.pk == acting_user.pk:
        raise ActionError("You cannot deactivate yourself.")
    with transaction.atomic():
        rows = list(Membership.objects.select_for_update().filter(user=member, institution=institution))
        if not rows:
            raise ActionError("Not a member of this institution.")
        if not active and any(m.role == Role.INSTITUTION_ADMIN for m in rows):
            if _active_admins(institution) <= {member.pk}:
                raise ActionError("An institution keeps at least one active administrator.")
        for membership in rows:
            if membership.is_active != active:
                membership.is_active = active
                # save(), not update(): the signal keeps auth groups in step.
                membership.save(update_fields=["is_active"])
        elsewhere = Membership.objects.filter(user=member).exclude(institution=institution).exists()
        account_changed = not elsewhere and not member.is_platform_admin and member.is_active != active
        if account_changed:
            member.is_active = active
            member.save(update_fields=["is_active"])
            if not active:
                ApiToken.objects.filter(user=member, revoked_at__isnull=True).update(revoked_at=timezone.now())
                authcache.forget()
        _record_member_change(
            "member.reactivated" if active else "member.deactivated",
            institution,
            member,
            acting_user,
            request,
            account_changed=account_changed,
        )
