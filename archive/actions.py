"""Multi-step changes to the archive (the only place archive state changes)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django_fsm import TransitionNotAllowed

from pacs_cloud.fsm import apply_transition

from . import signals
from .models import Study


def do_complete_study(study: Study, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """Mark a receiving study complete and announce it; False if it was not receiving.

    Called by the stability sweep and by MPPS completion; safe to call twice.
    """
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        try:
            apply_transition(
                locked,
                "complete",
                actor=actor,
                actor_label=actor_label,
                institution=locked.institution_id,
                reason=reason,
                update_fields=["completed_at"],
            )
        except TransitionNotAllowed:
            return False
        transaction.on_commit(lambda: signals.study_completed.send(Study, study=locked))
    return True


def do_mark_study_routed(study: Study, *, actor: Any = None, actor_label: str = "", reason: str = "") -> bool:
    """Mark a complete study as handed to the reading workflow; False if it was not complete.

    Called by the workflow engine inside the transaction that starts the
    study's reading process; safe to call twice.
    """
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        try:
            apply_transition(
                locked, "route", actor=actor, actor_label=actor_label, institution=locked.institution_id, reason=reason
            )
        except TransitionNotAllowed:
            return False
    return True
