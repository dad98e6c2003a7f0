"""``/api/v1/prior-rules/``: the prior rules of the institutions the caller administers."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as ModelValidationError
from django.db.models import QuerySet
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError

from pacs_cloud import access
from pacs_cloud.access import IsInstitutionAdmin
from pacs_cloud.models import Institution, Role

from . import actions
from .models import PriorRule
from .selection import REGIONS


class PriorRuleSerializer(serializers.ModelSerializer):
    institution = serializers.PrimaryKeyRelatedField(queryset=Institution.objects.all())
    body_region = serializers.CharField(
        max_length=32, required=False, allow_blank=True, help_text=f"One of {', '.join(sorted(REGIONS))}, or blank."
    )

    class Meta:
        model = PriorRule
        fields = ["id", "institution", *actions.RULE_FIELDS, "is_active"]

    def validate_institution(self, value: Institution) -> Institution:
        if value.pk not in access.institution_ids(self.context["request"].user, [Role.INSTITUTION_ADMIN]):
            raise serializers.ValidationError("You administer no such institution.")
        if self.instance is not None and self.instance.institution_id != value.pk:
            raise serializers.ValidationError("A rule cannot move to another institution.")
        return value


class PriorRuleViewSet(viewsets.ModelViewSet):
    """Rules choosing the relevant priors shown and granted with each study read, tried in position order."""

    serializer_class = PriorRuleSerializer
    permission_classes = [IsInstitutionAdmin]

    def get_queryset(self) -> QuerySet[PriorRule]:
        ids = access.institution_ids(self.request.user, [Role.INSTITUTION_ADMIN])
        return PriorRule.objects.filter(institution_id__in=ids).order_by("institution_id", "position", "created_at")

    def _save(self, serializer: Any, rule: PriorRule | None) -> None:
        values = dict(serializer.validated_data)
        # An update may leave the institution out: the rule keeps its own.
        institution: Institution = values.pop("institution", None) or rule.institution  # type: ignore[union-attr]
        try:
            serializer.instance = actions.do_save_prior_rule(
                institution=institution, acting_user=self.request.user, rule=rule, **values
            )
        except ModelValidationError as exc:
            raise ValidationError(exc.message_dict) from None

    def perform_create(self, serializer: Any) -> None:
        self._save(serializer, None)

    def perform_update(self, serializer: Any) -> None:
        self._save(serializer, serializer.instance)

    def perform_destroy(self, instance: PriorRule) -> None:
        actions.do_delete_prior_rule(instance, acting_user=self.request.user)
