"""Multi-step changes to tenancy and tokens (the only place they change).

Callers (views, the API, commands) check that the acting user may act on the
institution first — ``access.access_institution(user, id, Role.INSTITUTION_ADMIN)``
— and pass the institution they got from it. Every action writes its audit
event in the same transaction as the change.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from . import audit, authcache
from .authentication import issue_token
from .models import LANGUAGES, ApiToken, AuditEvent, CharacterSet, Institution, Invitation, Membership, Role, User


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


# Institutions and invitations (onboarding) ----------------------------------------

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,49}$")
_PREFIX = re.compile(r"^[A-Z0-9]{1,8}$")


def do_create_institution(
    *,
    acting_user: User,
    name: str,
    slug: str,
    accession_prefix: str,
    patient_id_prefix: str = "",
    time_zone: str = "Asia/Shanghai",
    character_set: str = CharacterSet.UTF8,
    languages: Iterable[str] = ("zh-Hans", "en"),
    kind: str = Institution.Kind.HOSPITAL,
    admin_email: str = "",
    admin_name: str = "",
    request: HttpRequest | None = None,
) -> tuple[Institution, Invitation, str]:
    """Create an institution and invite its first administrator (platform administrators only).

    Returns the institution, the invitation and the invitation's token, which
    is shown this once. Raises ``ActionError`` naming the first wrong field.
    """
    if not (getattr(acting_user, "is_platform_admin", False) and acting_user.is_active):
        raise ActionError("Only a platform administrator creates institutions.")
    name, slug = name.strip(), slug.strip().lower()
    accession_prefix, patient_id_prefix = accession_prefix.strip().upper(), patient_id_prefix.strip().upper()
    if not name:
        raise ActionError("Give the institution a name.")
    if not _SLUG.match(slug):
        raise ActionError("The short name takes 2–50 lower-case letters, digits and hyphens, e.g. lakeside.")
    for label, prefix, required in (("accession", accession_prefix, True), ("patient ID", patient_id_prefix, False)):
        if (prefix or required) and not _PREFIX.match(prefix):
            raise ActionError(f"The {label} prefix takes 1–8 capital letters or digits.")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ActionError(f"Unknown time zone {time_zone!r}; use an IANA name such as Asia/Shanghai.") from None
    if character_set not in CharacterSet.values:
        raise ActionError("Unknown character set.")
    chosen = list(dict.fromkeys(languages))
    if not chosen or any(code not in LANGUAGES for code in chosen):
        raise ActionError("Choose at least one of the languages offered.")
    if kind not in Institution.Kind.values:
        raise ActionError("Unknown kind of institution.")
    with transaction.atomic():
        if Institution.objects.filter(slug=slug).exists():
            raise ActionError(f"The short name {slug} is taken.")
        institution = Institution.objects.create(
            name=name,
            slug=slug,
            kind=kind,
            accession_prefix=accession_prefix,
            patient_id_prefix=patient_id_prefix,
            patient_id_issuer=slug.upper()[:64],
            time_zone=time_zone,
            character_set=character_set,
            languages=chosen,
        )
        audit.record(
            "institution.created",
            request=request,
            actor=acting_user,
            role="platform_admin",
            institution=institution,
            object_type="institution",
            object_id=institution.pk,
            detail={"name": name, "slug": slug, "time_zone": time_zone, "character_set": character_set},
        )
        invitation, token = do_invite(
            institution,
            roles=[Role.INSTITUTION_ADMIN],
            email=admin_email,
            display_name=admin_name,
            acting_user=acting_user,
            request=request,
        )
    return institution, invitation, token


def do_invite(
    institution: Institution,
    *,
    roles: Iterable[str],
    email: str = "",
    display_name: str = "",
    acting_user: User,
    request: HttpRequest | None = None,
) -> tuple[Invitation, str]:
    """An invitation to join ``institution`` with ``roles``; returns it and its token (shown once).

    The caller has checked that ``acting_user`` administers the institution
    (or, for a new institution's first administrator, runs the platform).
    """
    wanted = sorted(set(roles))
    if not wanted or any(role not in Role.values for role in wanted):
        raise ActionError("Give the invitation at least one known role.")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            institution=institution,
            token_hash=Invitation.hash_token(token),
            email=email.strip(),
            display_name=display_name.strip(),
            roles=wanted,
            created_by=acting_user if getattr(acting_user, "pk", None) else None,
            expires_at=timezone.now() + timedelta(hours=settings.INVITATION_TTL_HOURS),
        )
        audit.record(
            "invitation.created",
            request=request,
            actor=acting_user,
            institution=institution,
            object_type="invitation",
            object_id=invitation.pk,
            detail={"roles": wanted, "email": invitation.email, "expires_at": invitation.expires_at.isoformat()},
        )
    return invitation, token


def _refuse_invitation(request: HttpRequest | None, invitation: Invitation | None, reason: str, message: str) -> None:
    # Outside the transaction, so the refusal stays in the trail.
    audit.record(
        "invitation.refused",
        request=request,
        actor_label="anonymous",
        institution=invitation.institution_id if invitation else None,
        object_type="invitation",
        object_id=invitation.pk if invitation else "",
        outcome=AuditEvent.Outcome.DENIED,
        detail={"reason": reason},
    )
    raise ActionError(message)


def usable_invitation(token: str, *, request: HttpRequest | None = None) -> Invitation:
    """The open invitation ``token`` belongs to; ``ActionError`` (audited) for a wrong, used or expired one."""
    invitation = (
        Invitation.objects.select_related("institution").filter(token_hash=Invitation.hash_token(token or "")).first()
    )
    if invitation is None or not invitation.institution.is_active:
        _refuse_invitation(request, None, "unknown", "This invitation link is not valid.")
    assert invitation is not None
    if invitation.accepted_at is not None:
        _refuse_invitation(request, invitation, "used", "This invitation has been used already; sign in instead.")
    if invitation.expires_at <= timezone.now():
        _refuse_invitation(request, invitation, "expired", "This invitation has expired; ask for a new one.")
    return invitation


def do_accept_invitation(
    token: str, *, username: str, password: str, display_name: str = "", request: HttpRequest | None = None
) -> User:
    """Create the invited person's account with the invitation's roles; the link stops working.

    Raises ``ActionError`` (wrong, used or expired link; taken username) and
    Django's ``ValidationError`` for a password the validators refuse.
    """
    invitation = usable_invitation(token, request=request)
    username = username.strip()
    if not username:
        raise ActionError("Choose a username.")
    candidate = User(
        username=username, display_name=display_name.strip() or invitation.display_name, email=invitation.email
    )
    validate_password(password, user=candidate)
    try:
        return _accept(invitation, candidate, password, request)
    except _Raced:
        usable_invitation(token, request=request)  # another request used it first: recorded and refused here
        raise


class _Raced(Exception):
    pass


def _accept(invitation: Invitation, candidate: User, password: str, request: HttpRequest | None) -> User:
    username = candidate.username
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if locked.accepted_at is not None or locked.expires_at <= timezone.now():
            raise _Raced
        if User.objects.filter(username__iexact=username).exists():
            raise ActionError(f"The username {username} is taken; choose another.")
        candidate.set_password(password)
        candidate.save()
        for role in locked.roles:
            Membership.objects.create(user=candidate, institution=locked.institution, role=role)
        locked.accepted_at = timezone.now()
        locked.accepted_by = candidate
        locked.save(update_fields=["accepted_at", "accepted_by"])
        audit.record(
            "invitation.accepted",
            request=request,
            actor=candidate,
            institution=locked.institution,
            object_type="invitation",
            object_id=locked.pk,
            detail={"username": candidate.username, "roles": locked.roles},
        )
    return candidate
