"""The institution administrator's page of prior rules."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from pacs_cloud.models import Role
from pacs_cloud.tenancy import current_institution_as

from . import actions
from .models import PriorRule
from .selection import DEFAULTS, REGIONS


class PriorRuleForm(forms.ModelForm):
    body_region = forms.ChoiceField(
        choices=[("", "any")] + [(r, r.title()) for r in sorted(REGIONS)], required=False, label="Body region"
    )

    class Meta:
        model = PriorRule
        fields = list(actions.RULE_FIELDS) + ["is_active"]
        labels = {"years": "Within (years)", "max_priors": "At most (studies)", "modality": "Modality read"}


@login_required
@require_http_methods(["GET", "POST"])
def prior_rules(request: HttpRequest) -> HttpResponse:
    institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
    form = PriorRuleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            actions.do_save_prior_rule(institution=institution, acting_user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Rule “{form.cleaned_data['name']}” saved.")
            return redirect("archive-list-prior-rules")
    rules = PriorRule.objects.filter(institution=institution).order_by("position", "created_at")
    context = {"institution": institution, "rules": rules, "form": form, "defaults": DEFAULTS}
    return render(request, "archive/prior_rules.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def prior_rule(request: HttpRequest, pk: Any) -> HttpResponse:
    institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
    rule = PriorRule.objects.filter(pk=pk, institution=institution).first()
    if rule is None:
        raise Http404("No such rule")
    if request.method == "POST" and request.POST.get("delete"):
        actions.do_delete_prior_rule(rule, acting_user=request.user)
        messages.success(request, f"Rule “{rule.name}” removed.")
        return redirect("archive-list-prior-rules")
    form = PriorRuleForm(request.POST or None, instance=rule)
    if request.method == "POST" and form.is_valid():
        try:
            actions.do_save_prior_rule(
                institution=institution, acting_user=request.user, rule=rule, **form.cleaned_data
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Rule “{rule.name}” saved.")
            return redirect("archive-list-prior-rules")
    return render(request, "archive/prior_rule.html", {"institution": institution, "rule": rule, "form": form})
