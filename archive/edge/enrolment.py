"""Cloud side: enrolling an edge gateway, its token, and what it reports.

An edge is a service account (member of the institution with the
technologist role, no password) plus a bearer token that is shown once.
Rotating issues a new token and revokes the old one at once; revoking the
edge revokes its token and deactivates its account, so nothing it holds
works any more.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from pacs_cloud import audit, authcache
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import ApiToken, Institution, Membership, Role, User

from ..models import EdgeGateway, EdgeQuarantine, Instance

EDGE_ROLE = Role.TECHNOLOGIST  # stores over STOW-RS, retrieves over WADO-RS


class EnrolmentError(ValueError):
    pass


def _issue(edge_user: User, name: str) -> tuple[ApiToken, str]:
    return issue_token(edge_user, name=f"edge {name}"[:100], ttl_hours=settings.API_TOKEN_MAX_TTL_HOURS)


def do_enrol_edge(
    institution: Institution, *, name: str, acting_user: Any, request: HttpRequest | None = None
) -> tuple[EdgeGateway, str]:
    """Enrol an edge gateway; returns it and its token (shown this once)."""
    name = name.strip()
    if not name:
        raise EnrolmentError("Give the edge gateway a name.")
    with transaction.atomic():
        if EdgeGateway.objects.filter(institution=institution, name=name).exists():
            raise EnrolmentError(f"{institution.name} has an edge gateway named {name} already.")
        user = User(
            username=f"edge.{institution.slug}.{secrets.token_hex(4)}",
            display_name=f"Edge gateway {name}"[:200],
        )
        user.set_unusable_password()
        user.save()
        Membership.objects.create(user=user, institution=institution, role=EDGE_ROLE)
        token, key = _issue(user, name)
        edge = EdgeGateway.objects.create(institution=institution, name=name, user=user, token=token)
        audit.record(
            "archive.edge.enrolled",
            request=request,
            actor=acting_user,
            institution=institution,
            object_type="archive.edgegateway",
            object_id=edge.pk,
            detail={"name": name, "token_prefix": token.prefix},
        )
    return edge, key


def do_rotate_edge_token(edge: EdgeGateway, *, acting_user: Any, request: HttpRequest | None = None) -> str:
    """A new token for ``edge``; the old one stops working now. Returns the new secret."""
    with transaction.atomic():
        edge = EdgeGateway.objects.select_for_update().get(pk=edge.pk)
        if edge.revoked_at is not None:
            raise EnrolmentError("This edge gateway is revoked; enrol a new one.")
        ApiToken.objects.filter(user=edge.user, revoked_at__isnull=True).update(revoked_at=timezone.now())
        authcache.forget()  # the old token stops working now, not when the memo expires
        token, key = _issue(edge.user, edge.name)
        edge.token = token
        edge.save(update_fields=["token"])
        audit.record(
            "archive.edge.token_rotated",
            request=request,
            actor=acting_user,
            institution=edge.institution_id,
            object_type="archive.edgegateway",
            object_id=edge.pk,
            detail={"name": edge.name, "token_prefix": token.prefix},
        )
    return key


def do_revoke_edge(edge: EdgeGateway, *, acting_user: Any, request: HttpRequest | None = None) -> None:
    """Revoke ``edge``: its token and its account stop working at once."""
    with transaction.atomic():
        edge = EdgeGateway.objects.select_for_update().get(pk=edge.pk)
        if edge.revoked_at is not None:
            return
        now = timezone.now()
        ApiToken.objects.filter(user=edge.user, revoked_at__isnull=True).update(revoked_at=now)
        Membership.objects.filter(user=edge.user).update(is_active=False)
        User.objects.filter(pk=edge.user_id).update(is_active=False)
        authcache.forget()
        edge.revoked_at = now
        edge.save(update_fields=["revoked_at"])
        audit.record(
            "archive.edge.revoked",
            request=request,
            actor=acting_user,
            institution=edge.institution_id,
            object_type="archive.edgegateway",
            object_id=edge.pk,
            detail={"name": edge.name},
        )


def edge_of(user: Any) -> EdgeGateway | None:
    """The active edge gateway a (token-authenticated) user is, or None."""
    if not getattr(user, "is_authenticated", False):
        return None
    edge = EdgeGateway.objects.select_related("institution").filter(user=user, revoked_at__isnull=True).first()
    if edge is None or not edge.institution.is_active:
        return None
    return edge


def _number(value: Any, kind: type, minimum: float = 0) -> Any:
    if value is None or value == "":
        return None
    number = kind(value)
    if number < minimum:
        raise EnrolmentError(f"{value!r} is below {minimum}")
    return number


def _moment(value: Any) -> dt.datetime | None:
    if not value:
        return None
    moment = dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def do_record_heartbeat(edge: EdgeGateway, report: dict[str, Any], *, address: str = "") -> EdgeGateway:
    """Keep what the edge reports about itself (PS: its own figures, taken as given)."""
    try:
        edge.version = str(report.get("version", ""))[:40]
        edge.outbox_depth = _number(report.get("outbox_depth"), int) or 0
        edge.oldest_unsent_seconds = _number(report.get("oldest_unsent_seconds"), float)
        edge.disk_free_bytes = _number(report.get("disk_free_bytes"), int)
        edge.online_bytes = _number(report.get("online_bytes"), int)
        edge.quarantined = _number(report.get("quarantined"), int) or 0
        edge.last_sync_at = _moment(report.get("last_sync_at"))
    except (TypeError, ValueError) as exc:
        raise EnrolmentError(f"unreadable heartbeat: {exc}") from None
    edge.last_seen_at = timezone.now()
    edge.last_address = address[:64]
    edge.save(
        update_fields=[
            "version",
            "outbox_depth",
            "oldest_unsent_seconds",
            "disk_free_bytes",
            "online_bytes",
            "quarantined",
            "last_sync_at",
            "last_seen_at",
            "last_address",
        ]
    )
    return edge


def do_record_quarantine(edge: EdgeGateway, items: Iterable[dict[str, Any]]) -> int:
    """Record instances the edge quarantined (idempotent per instance and content); returns how many are new."""
    created = 0
    now = timezone.now()
    for item in items:
        sop_uid = str(item.get("sop_instance_uid", ""))[:64]
        if not sop_uid:
            continue
        _, made = EdgeQuarantine.objects.update_or_create(
            edge=edge,
            sop_instance_uid=sop_uid,
            sha256=str(item.get("sha256", ""))[:64],
            defaults={
                "institution_id": edge.institution_id,
                "study_instance_uid": str(item.get("study_instance_uid", ""))[:64],
                "reason": str(item.get("reason", ""))[:300],
                "status_code": item.get("status_code") if isinstance(item.get("status_code"), int) else None,
                "quarantined_at": _moment(item.get("quarantined_at")) or now,
                "reported_at": now,
            },
        )
        if made:
            created += 1
            audit.record(
                "archive.edge.quarantined",
                actor=edge.user,
                institution=edge.institution_id,
                object_type="archive.edgegateway",
                object_id=edge.pk,
                outcome="failure",
                detail={"sop_instance_uid": sop_uid, "reason": str(item.get("reason", ""))[:300]},
            )
    return created


def confirmations(edge: EdgeGateway, sop_uids: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each named instance the cloud holds for the edge's institution."""
    uids = [str(uid)[:64] for uid in sop_uids][:1000]
    rows = Instance.objects.filter(institution_id=edge.institution_id, sop_instance_uid__in=uids)
    return dict(rows.values_list("sop_instance_uid", "sha256"))


def health(edge: EdgeGateway, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """What the health page shows of one edge: its state and the alerts that apply."""
    now = now or timezone.now()
    limit = settings.EDGE_BACKLOG_ALERT_MINUTES * 60
    alerts = []
    if edge.revoked_at is not None:
        state = "revoked"
    elif edge.last_seen_at is None:
        state = "never seen"
    else:
        silent = (now - edge.last_seen_at).total_seconds()
        state = "ok"
        if silent > limit:
            state = "silent"
            alerts.append(f"no report for {round(silent / 60)} min")
        if edge.oldest_unsent_seconds is not None and edge.oldest_unsent_seconds > limit:
            state = "backlog"
            alerts.append(
                f"{edge.outbox_depth} images waiting, the oldest for {round(edge.oldest_unsent_seconds / 60)} min"
            )
        if edge.quarantined:
            alerts.append(f"{edge.quarantined} images refused by the cloud (quarantined)")
    return {"state": state, "alerts": alerts, "alert": bool(alerts)}
