"""Changes to an institution's prior rules (institution administrators; audited)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.models import Institution

from .models import PriorRule

RULE_FIELDS = ("name", "position", "modality", "body_region", "modality_match", "same_region", "years", "max_priors")


def do_save_prior_rule(
    *, institution: Institution, acting_user: Any, rule: PriorRule | None = None, **values: Any
) -> PriorRule:
    """Create or change a prior rule of ``institution``; ``values`` are :data:`RULE_FIELDS` and ``is_active``."""
    created = rule is None or rule._state.adding
    with transaction.atomic():
        if rule is None:
            rule = PriorRule(institution=institution)
        elif rule.institution_id != institution.pk:
            raise ValueError("the rule belongs to another institution")
        for name, value in values.items():
            if name not in (*RULE_FIELDS, "is_active"):
                raise TypeError(f"unknown prior rule field {name!r}")
            setattr(rule, name, value)
        rule.updated_at = timezone.now()
        rule.full_clean()
        rule.save()
        audit.record(
            "archive.priorrule.create" if created else "archive.priorrule.change",
            actor=acting_user,
            institution=institution,
            object_type="archive.priorrule",
            object_id=rule.pk,
            detail={name: getattr(rule, name) for name in (*RULE_FIELDS, "is_active")},
        )
    return rule


def do_delete_prior_rule(rule: PriorRule, *, acting_user: Any) -> None:
    with transaction.atomic():
        audit.record(
            "archive.priorrule.delete",
            actor=acting_user,
            institution=rule.institution_id,
            object_type="archive.priorrule",
            object_id=rule.pk,
            detail={"name": rule.name},
        )
        rule.delete()
