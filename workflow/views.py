"""Pages: the radiologist's live worklist, a task, routing policies and pools."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from archive.models import Study
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.fsm import history
from pacs_cloud.lib.local_time import offset_label
from pacs_cloud.models import Institution, Role, User
from pacs_cloud.tenancy import current_institution

from . import access, actions, diagram, policy
from .api import ORDERINGS, WorklistPagination, audit_patient_list, worklist_queryset
from .facts import study_facts
from .models import PRIORITY_RANK, PoolMember, Priority, ReadingAgreement, RoutingPolicy
from .serializers import viewer_url

PAGE_SIZE = 100
TABS = [("offered", "Offered to me"), ("claimed", "My claimed"), ("finished", "My finished")]


def _params(request: HttpRequest) -> dict[str, str]:
    keep = ("view", "priority", "modality", "hospital", "ordering")
    return {k: request.GET[k] for k in keep if request.GET.get(k)}


def _rows_context(request: HttpRequest) -> dict[str, Any]:
    params = _params(request)
    who = access.reader(request.user)
    qs = worklist_queryset(request.user, params, who)
    tasks = list(qs[:PAGE_SIZE])
    total = len(tasks) if len(tasks) < PAGE_SIZE else qs.order_by()[: WorklistPagination.COUNT_CAP + 1].count()
    clinical = who.clinical
    rows = [(task, access.can_see_patient(request.user, task, clinical)) for task in tasks]
    audit_patient_list(request, [task.pk for task, sees in rows if sees])
    return {
        "rows": rows,
        "total": total,
        "more": total > len(tasks),
        "capped": total > WorklistPagination.COUNT_CAP,
        "params": params,
        "view": params.get("view", "offered"),
        "now": timezone.now(),
    }


@login_required
def worklist(request: HttpRequest) -> HttpResponse:
    """Everything offered to me across every hospital I read for, what I hold and what I finished."""
    try:
        context = _rows_context(request)
    except ValidationError as error:
        return HttpResponseBadRequest(f"Bad worklist query: {error.detail}")
    who = access.reader(request.user)
    hospital_ids = who.hospitals()
    base = {k: v for k, v in context["params"].items() if k != "ordering"}
    context.update(
        tabs=TABS,
        hospitals=Institution.objects.filter(pk__in=hospital_ids).order_by("name"),
        priorities=Priority.choices,
        modalities=["CR", "CT", "DX", "MG", "MR", "NM", "PT", "RF", "US", "XA"],
        sort_links={key: "?" + _query({**base, "ordering": key}) for key in ORDERINGS},
        rows_url=reverse("workflow-list-rows"),
        is_reader=bool(who.own or who.pools),
    )
    return render(request, "workflow/worklist.html", context)


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


@login_required
def worklist_rows(request: HttpRequest) -> HttpResponse:
    """The worklist's rows alone, for the live page to redraw after a push."""
    try:
        context = _rows_context(request)
    except ValidationError as error:
        return HttpResponseBadRequest(f"Bad worklist query: {error.detail}")
    return render(request, "workflow/_rows.html", context)


@login_required
@audit.records_refusal("workflow.readingtask.open_refused", object_type="workflow.readingtask", key="pk")
def task_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    task = access.access_task(request.user, pk)
    sees_patient = access.can_see_patient(request.user, task)
    if sees_patient:
        actions.do_touch_task(task, acting_user=request.user, request=request, what="view")
    offered = access.offered_tasks(request.user).filter(pk=task.pk).exists()
    context = {
        "task": task,
        "sees_patient": sees_patient,
        "patient": task.study.patient if sees_patient else None,
        "study": task.study if sees_patient else None,
        "viewer_url": viewer_url(task.study_id) if sees_patient else None,
        "can_claim": offered,
        "holds": task.claimed_by_id == request.user.pk and task.state in ("claimed", "drafting", "preliminary"),
        "history": history(task) if sees_patient or access.can_manage_tasks(request.user, task) else [],
    }
    return render(request, "workflow/task.html", context)


@login_required
@require_POST
@audit.records_refusal("workflow.readingtask.claim_refused", object_type="workflow.readingtask", key="pk")
def claim_task(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Claim, then open the study (the viewer when it is there, else the task page)."""
    task = access.access_task(request.user, pk, to_claim=True)
    try:
        actions.do_claim_reading_task(task, acting_user=request.user, request=request)
    except actions.TaskRefused as refused:
        messages.error(request, refused.message)
        return redirect("workflow-view-worklist")
    return redirect("workflow-open-task", pk=task.pk)


@login_required
@audit.records_refusal("workflow.readingtask.open_refused", object_type="workflow.readingtask", key="pk")
def open_task(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Open the task's study for its holder (audited), in the viewer when there is one."""
    task = access.access_task(request.user, pk)
    if not access.can_see_patient(request.user, task):
        raise Http404("No such reading task")
    actions.do_touch_task(task, acting_user=request.user, request=request, what="open")
    url = viewer_url(task.study_id)
    return redirect(url) if url else redirect("workflow-view-task", pk=task.pk)


@login_required
@require_POST
def release_task(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    task = access.access_task(request.user, pk)
    try:
        actions.do_release_reading_task(task, acting_user=request.user, reason=request.POST.get("reason", "")[:500])
    except actions.TaskRefused as refused:
        messages.error(request, refused.message)
        return redirect("workflow-view-task", pk=task.pk)
    messages.info(request, "Task released: it is offered again.")
    return redirect("workflow-view-worklist")


# Routing policies ------------------------------------------------------------------


def _admin_institution(request: HttpRequest, *, manage: bool = False) -> Institution:
    """The current institution, if the user administers it (or reads for it, to look)."""
    institution = current_institution(request)
    roles = [Role.INSTITUTION_ADMIN] if manage else [Role.INSTITUTION_ADMIN, Role.RADIOLOGIST]
    if institution is None or not core_access.has_role(request.user, institution, *roles):
        raise Http404("Routing policies are for the hospital's administrators")
    return institution


@login_required
def policy_list(request: HttpRequest) -> HttpResponse:
    institution = _admin_institution(request)
    versions = RoutingPolicy.objects.filter(institution=institution).select_related("created_by")
    current = next((v for v in versions if v.is_current), None)
    return render(
        request,
        "workflow/policies.html",
        {
            "institution": institution,
            "versions": versions,
            "current": current,
            "can_edit": core_access.has_role(request.user, institution, Role.INSTITUTION_ADMIN),
        },
    )


def _dry_run_form(request: HttpRequest, institution: Institution, parsed: policy.Policy | None) -> tuple[Any, str]:
    """Run the dry-run form in ``request.GET``/``POST``; returns (result, error)."""
    data = request.POST if request.method == "POST" else request.GET
    ref = (data.get("study") or "").strip()
    if not ref and not data.get("modality"):
        return None, ""
    at: datetime | None = None
    if data.get("at"):
        try:
            at = parse_datetime(data["at"])
        except ValueError:  # well-formed but impossible, such as 2026-02-30T10:00
            at = None
        if at is None:
            return None, "The time is not a date and time (YYYY-MM-DDTHH:MM)."
        if timezone.is_naive(at):
            at = timezone.make_aware(at, policy.local_time(institution, timezone.now()).tzinfo)
    if ref:
        lookup = Q(accession_number=ref)
        try:
            lookup |= Q(pk=uuid.UUID(ref))
        except ValueError:
            pass
        study = Study.objects.filter(lookup, institution=institution).select_related("patient").first()
        if study is None:
            return None, f"No study {ref!r} at {institution.name}."
        facts = study_facts(study)
    else:
        age = data.get("patient_age", "")
        facts = policy.StudyFacts(
            modality=data.get("modality", "").upper()[:16],
            modalities=[data.get("modality", "").upper()[:16]],
            body_part=data.get("body_part", "").upper()[:64],
            procedure_code=data.get("procedure_code", "").upper()[:64],
            patient_age=int(age) if age.isdigit() else None,
        )
    if data.get("priority") in PRIORITY_RANK:
        facts.priority = data["priority"]
    return policy.dry_run(parsed, institution, facts, at), ""


@login_required
def policy_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    row = access.access_policy(request.user, pk)
    result, error = _dry_run_form(request, row.institution, actions.parsed_policy(row))
    highlight = ""
    if result is not None:
        highlight = "fallback" if result["matched"]["index"] is None else str(result["matched"]["index"])
    return render(
        request,
        "workflow/policy.html",
        {
            "row": row,
            "definition": json.dumps(row.definition, indent=2, ensure_ascii=False),
            "result": result,
            "error": error,
            "form": request.GET,
            "highlight": highlight,
            "priorities": Priority.choices,
            # The form's time is a wall-clock time at the policy's hospital.
            "at_zone": offset_label(policy.local_time(row.institution, timezone.now())),
        },
    )


@login_required
def policy_diagram(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    row = access.access_policy(request.user, pk)
    raw = request.GET.get("highlight", "")
    highlight: int | None | str = None if raw == "fallback" else (int(raw) if raw.isdigit() else "")
    return HttpResponse(diagram.render(row, highlight=highlight), content_type="image/svg+xml")


@login_required
def policy_edit(request: HttpRequest) -> HttpResponse:
    """Edit the definition as JSON; saving validates it and makes a new version."""
    institution = _admin_institution(request, manage=True)
    current = actions.current_policy(institution)
    errors: dict[str, list[str]] = {}
    text = json.dumps(current.definition if current else {"rules": [], "fallback": policy.DEFAULT_FALLBACK}, indent=2)
    name, note = (current.name if current else "Routing policy"), ""
    if request.method == "POST":
        text, name, note = (
            request.POST.get("definition", ""),
            request.POST.get("name", name)[:200],
            request.POST.get("note", "")[:500],
        )
        try:
            definition = json.loads(text)
        except json.JSONDecodeError as exc:
            errors = {"definition": [f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."]}
        else:
            try:
                row = actions.do_save_routing_policy(
                    institution, definition, acting_user=request.user, name=name, note=note, request=request
                )
            except policy.PolicyError as error:
                errors = error.as_dict()
            else:
                messages.info(request, f"Saved as version {row.version}; new studies follow it from now on.")
                return redirect("workflow-view-policy", pk=row.pk)
    agreements = ReadingAgreement.objects.filter(hospital=institution).select_related("pool")
    readers = (
        User.objects.filter(
            Q(memberships__institution=institution, memberships__role=Role.RADIOLOGIST, memberships__is_active=True)
            | Q(pool_memberships__credentialed_for=institution, pool_memberships__is_active=True)
        )
        .distinct()
        .order_by("username")
    )
    return render(
        request,
        "workflow/policy_edit.html",
        {
            "institution": institution,
            "current": current,
            "text": text,
            "name": name,
            "note": note,
            "errors": errors,
            "agreements": [a for a in agreements if a.in_force()],
            "readers": readers,
        },
        status=400 if errors else 200,
    )


# Pools ------------------------------------------------------------------------------


@login_required
def pool_list(request: HttpRequest) -> HttpResponse:
    """Pools I manage, belong to or send studies to, with members and agreements."""
    return _pools_page(request)


def _pools_page(
    request: HttpRequest, error_for: Any = None, error: DjangoValidationError | None = None
) -> HttpResponse:
    """The pools page; a refused change (``error``) shows beside the form of ``error_for`` (a pool or member)."""
    pools = (
        access.visible_pools(request.user)
        .select_related("owner")
        .prefetch_related("members__user", "members__credentialed_for", "agreements__hospital")
    )
    managed = access.admin_institutions(request.user)
    return render(
        request,
        "workflow/pools.html",
        {
            "pools": pools,
            "managed": managed,
            "hospitals": Institution.objects.filter(is_active=True, kind=Institution.Kind.HOSPITAL),
            "error_for": str(error_for) if error else "",
            "error_messages": _messages_of(error) if error else [],
        },
        status=400 if error else 200,
    )


def _member_fields(request: HttpRequest, *, adding: bool = False) -> dict[str, Any]:
    """A member form's fields as the actions take them (they validate)."""
    return {
        "subspecialties": [s for s in request.POST.get("subspecialties", "").split(",") if s.strip()],
        "credentialed_for": request.POST.getlist("credentialed_for"),
        "claim_cap": request.POST.get("claim_cap", "").strip() or None,
        # The edit form's box sends nothing when unticked; the add form has none (a new member is active).
        "is_active": adding or request.POST.get("is_active") == "on",
    }


def _messages_of(error: DjangoValidationError) -> list[str]:
    return (
        [m for messages_ in error.message_dict.values() for m in messages_]
        if hasattr(error, "error_dict")
        else error.messages
    )


@login_required
@require_POST
def pool_add_member(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    pool = access.access_pool(request.user, pk, manage=True)
    username = request.POST.get("username", "").strip()
    user = User.objects.filter(username=username, is_active=True).first()
    try:
        actions.do_add_pool_member(
            pool, user, acting_user=request.user, request=request, **_member_fields(request, adding=True)
        )
    except DjangoValidationError as error:
        return _pools_page(request, pool.pk, error)
    messages.info(request, f"{user} is a member of {pool.name}.")
    return redirect("workflow-list-pools")


@login_required
@require_POST
def pool_edit_member(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    member = get_object_or_404(
        PoolMember.objects.select_related("pool"), pk=pk, pool__owner_id__in=access.admin_institutions(request.user)
    )
    if request.POST.get("remove"):
        actions.do_remove_pool_member(member, acting_user=request.user, request=request)
        messages.info(request, "Member removed.")
        return redirect("workflow-list-pools")
    try:
        actions.do_change_pool_member(member, acting_user=request.user, request=request, **_member_fields(request))
    except DjangoValidationError as error:
        return _pools_page(request, member.pk, error)
    messages.info(request, "Member updated.")
    return redirect("workflow-list-pools")
