"""Applying a state-machine transition together with its history row.

Every FSM in Cloud PACS keeps its state in a protected ``state`` field
(django-fsm-2) and changes it only through :func:`apply_transition`, called by
a ``do_*`` action that holds the row lock. The transition row and an audit
event are written in the caller's transaction.
"""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.dispatch import Signal

from . import audit
from .models import Transition

# Sent by :func:`record_transition` inside the caller's transaction, after the
# history row is written, so a receiver's summary commits or rolls back with the
# change. kwargs: obj, source, target, method, actor, time. Receivers must be
# cheap and must not raise (the statistics tables connect here).
transition_recorded = Signal()


def apply_transition(
    obj: models.Model,
    method: str,
    *,
    actor: Any = None,
    actor_label: str = "",
    institution: Any = None,
    reason: str = "",
    update_fields: tuple[str, ...] | list[str] = (),
    audit_detail: dict | None = None,
    **kwargs: Any,
) -> Transition:
    """Call ``obj.<method>(**kwargs)``, save ``state`` and ``update_fields``, log it.

    Preconditions: inside ``transaction.atomic`` with ``obj`` re-read via
    ``select_for_update()``. Raises ``django_fsm.TransitionNotAllowed`` (and
    changes nothing) when the transition is not allowed from the current state.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("apply_transition must run inside transaction.atomic")
    source = obj.state  # type: ignore[attr-defined]
    getattr(obj, method)(**kwargs)
    obj.save(update_fields=["state", *update_fields])
    return record_transition(
        obj,
        source,
        obj.state,  # type: ignore[attr-defined]
        method,
        actor=actor,
        actor_label=actor_label,
        institution=institution,
        reason=reason,
        audit_detail=audit_detail,
    )


def record_transition(
    obj: models.Model,
    source: str,
    target: str,
    method: str,
    *,
    actor: Any = None,
    actor_label: str = "",
    institution: Any = None,
    reason: str = "",
    audit_detail: dict | None = None,
) -> Transition:
    """Write the transition row and audit event of a state change the caller has saved.

    For states kept outside django-fsm (a plain status column changed under
    a row lock); the precondition is the same as :func:`apply_transition`'s.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("record_transition must run inside transaction.atomic")
    label = obj._meta.label_lower
    row = Transition.objects.create(
        content_type=ContentType.objects.get_for_model(obj),
        object_id=obj.pk,
        source=source,
        target=target,
        method=method,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=actor_label,
        institution_id=getattr(institution, "pk", institution),
        reason=reason,
    )
    audit.record(
        f"{label}.{method}",
        actor=actor,
        actor_label=actor_label,
        institution=institution,
        object_type=label,
        object_id=obj.pk,
        detail={"source": source, "target": target, "reason": reason, **(audit_detail or {})},
    )
    transition_recorded.send(
        type(obj), obj=obj, source=source, target=target, method=method, actor=actor, time=row.time
    )
    return row


def history(obj: models.Model) -> models.QuerySet[Transition]:
    return Transition.objects.filter(
        content_type=ContentType.objects.get_for_model(obj), object_id=obj.pk
    ).select_related("actor")
