"""Writing and verifying the hash-chained audit trail.

Each event stores the SHA-256 of its predecessor (``prev_hash``) and its own
hash over a canonical form of its fields, so any edited, inserted or removed
row breaks the chain at that point. Appends are serialised (an advisory lock
on PostgreSQL, the single writer on SQLite) so the chain has no forks.

Reads are audited one event per request, so an append outside any
transaction (the common case for a read) costs two round trips on
PostgreSQL: lock and chain head together, then the row and the commit.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, connection, transaction
from django.db.models.sql.subqueries import InsertQuery
from django.http import Http404, HttpRequest
from django.utils import timezone

from .lib.client_address import client_address as lib_client_address
from .models import AuditEvent

GENESIS_HASH = "0" * 64
_View = TypeVar("_View", bound=Callable[..., Any])
# Arbitrary constant naming the advisory lock that serialises appends.
_CHAIN_LOCK_KEY = 0x5AC5A0D1


def event_hash(event: AuditEvent) -> str:
    body = {
        "time": event.time.isoformat(),
        "actor_id": event.actor_id,
        "actor": event.actor,
        "role": event.role,
        "institution_id": str(event.institution_id) if event.institution_id else None,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "patient_id": event.patient_id,
        "client_address": event.client_address,
        "outcome": event.outcome,
        "detail": event.detail,
        "prev_hash": event.prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def client_address(request: HttpRequest | None) -> str:
    if request is None:
        return ""
    return lib_client_address(request)


def record(
    action: str,
    *,
    request: HttpRequest | None = None,
    actor: Any = None,
    actor_label: str = "",
    role: str = "",
    institution: Any = None,
    object_type: str = "",
    object_id: object = "",
    patient_id: str = "",
    outcome: str = AuditEvent.Outcome.SUCCESS,
    address: str = "",
    detail: dict | None = None,
) -> AuditEvent:
    """Append one event. ``actor`` defaults to the request's user.

    ``institution`` may be an Institution or its id. Runs in its own atomic
    block; inside a caller's transaction the event commits or rolls back with
    the change it describes.
    """
    if actor is None and request is not None:
        user = getattr(request, "user", None)
        actor = user if user is not None and user.is_authenticated else None
    event = AuditEvent(
        time=timezone.now(),
        actor_id=getattr(actor, "pk", None),
        actor=(actor_label or getattr(actor, "username", ""))[:150],
        role=role,
        institution_id=getattr(institution, "pk", institution),
        action=action,
        object_type=object_type,
        object_id=str(object_id)[:128],
        patient_id=(patient_id or "")[:64],
        client_address=(address or client_address(request))[:64],
        outcome=outcome,
        detail=detail or {},
    )
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        _append_alone(event)
        return event
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event.prev_hash = last or GENESIS_HASH
        event.hash = event_hash(event)
        event.save(force_insert=True)
    return event


def _append_alone(event: AuditEvent) -> None:
    """Append ``event`` in a transaction of its own, in two round trips (PostgreSQL, autocommit).

    The first takes the chain lock, then reads the chain head and the event's
    id; each statement of a multi-statement query takes its own snapshot, so
    the head is read after the lock is held, as in :func:`record`. Ids are
    drawn under the lock too, so id order stays chain order. The second
    inserts the row and commits, which releases the lock.
    """
    with connection.cursor() as cursor:
        try:
            cursor.execute(
                "BEGIN; SELECT pg_advisory_xact_lock(%s); "
                "SELECT (SELECT hash FROM pacs_cloud_auditevent ORDER BY id DESC LIMIT 1), "
                "nextval(pg_get_serial_sequence('pacs_cloud_auditevent', 'id'))",
                [_CHAIN_LOCK_KEY],
            )
            last, event.pk = cursor.fetchone()
            event.prev_hash = last or GENESIS_HASH
            event.hash = event_hash(event)
            insert = InsertQuery(AuditEvent)
            insert.insert_values(AuditEvent._meta.concrete_fields, [event])
            [(sql, params)] = insert.get_compiler(connection=connection).as_sql()
            cursor.execute(f"{sql}; COMMIT", params)
        except BaseException:
            with contextlib.suppress(DatabaseError):
                cursor.execute("ROLLBACK")
            raise
    event._state.adding = False
    event._state.db = connection.alias


def records_refusal(action: str, *, object_type: str, key: str) -> Callable[[_View], _View]:
    """Decorate a view that opens or acts on one object: a 404 (missing, or not the caller's) is audited as denied.

    ``key`` names the URL argument that identifies the object. The event is
    written as the view gives up, outside any transaction of the view, so no
    rollback removes it. Works on function views and on DRF view methods.
    """

    def decorate(view: _View) -> _View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return view(*args, **kwargs)
            except Http404:
                request = next(a for a in args if hasattr(a, "META"))
                record(
                    action,
                    request=request,
                    object_type=object_type,
                    object_id=kwargs.get(key, ""),
                    outcome=AuditEvent.Outcome.DENIED,
                )
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def first_broken_link(batch_size: int = 5000) -> AuditEvent | None:
    """The first event whose stored hashes disagree with the chain, or None."""
    expected_prev = GENESIS_HASH
    last_id = 0
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            return None
        for event in batch:
            if event.prev_hash != expected_prev or event.hash != event_hash(event):
                return event
            expected_prev = event.hash
            last_id = event.id
