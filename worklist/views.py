"""The technologists' pages: the day's worklist, registration, orders, reconciliation."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.views.decorators.http import require_POST
from django_fsm import TransitionNotAllowed

from archive.models import Patient
from pacs_cloud import audit
from pacs_cloud.access import has_role
from pacs_cloud.fsm import history
from pacs_cloud.home import Panel
from pacs_cloud.lib.person_names import display_name
from pacs_cloud.models import CLINICAL_ROLES, Institution, Role
from pacs_cloud.tenancy import current_institution

from . import actions
from .access import access_order, access_reconciliation_item, visible_reconciliation
from .forms import (
    DismissForm,
    LinkForm,
    OrderForm,
    PatientForm,
    PatientSearchForm,
    ProcedureForm,
    ReasonForm,
    StationForm,
    patient_initial,
)
from .models import Order, Procedure, ReconciliationItem, Station


def _institution(request: HttpRequest, *roles: str) -> Institution:
    """The session's institution, if the user holds one of ``roles`` there."""
    institution = current_institution(request)
    if institution is None or not has_role(request.user, institution, *roles):
        raise PermissionDenied("Switch to an institution where you hold this role.")
    return institution


def _today(institution: Institution) -> dt.date:
    return timezone.now().astimezone(ZoneInfo(institution.time_zone)).date()


@login_required
def order_list(request: HttpRequest) -> HttpResponse:
    """The day's worklist of the current institution, kept live over WebSockets."""
    institution = _institution(request, *CLINICAL_ROLES)
    day = parse_date(request.GET.get("date", "")) or _today(institution)
    stations = Station.objects.filter(institution=institution, is_active=True).select_related("node")
    orders = (
        Order.objects.filter(institution=institution, scheduled_date=day)
        .select_related("patient", "procedure", "station__node")
        .order_by("scheduled_at", "accession_number")
    )
    station = request.GET.get("station", "")
    if station:
        orders = orders.filter(station_id__in=[s.pk for s in stations if str(s.pk) == station])
    rows = list(orders)
    audit.record(
        "worklist.order.list",
        request=request,
        institution=institution,
        detail={"date": day.isoformat(), "station": station, "count": len(rows)},
    )
    context = {
        "orders": rows,
        "day": day,
        "previous_day": day - dt.timedelta(days=1),
        "next_day": day + dt.timedelta(days=1),
        "stations": stations,
        "station": station,
        "can_change": has_role(request.user, institution, Role.TECHNOLOGIST),
        # Where row actions return to, also when the rows were fetched as a fragment.
        "page_url": f"{request.path}?date={day.isoformat()}" + (f"&station={station}" if station else ""),
    }
    template = "worklist/_order_rows.html" if request.GET.get("fragment") else "worklist/orders.html"
    return render(request, template, context)


def _register_patient(institution: Institution, data: dict[str, Any], request: HttpRequest) -> Patient:
    return actions.do_register_patient(
        institution,
        name=data["name"],
        patient_id=data["patient_id"],
        birth_date=data["birth_date"],
        sex=data["sex"],
        actor=request.user,
        request=request,
        allow_possible_duplicate=bool(request.POST.get("register_anyway")),
    )


@login_required
def register(request: HttpRequest) -> HttpResponse:
    """Register an exam: find the patient first, or register them, then the order."""
    institution = _institution(request, Role.TECHNOLOGIST)
    search = PatientSearchForm(request.GET or None)
    found: list[Patient] = []
    if search.is_valid() and search.cleaned_data["q"]:
        found = actions.find_patients(institution, search.cleaned_data["q"])
        audit.record(
            "worklist.patient.search", request=request, institution=institution, detail={"results": len(found)}
        )
    chosen = None
    chosen_id = request.POST.get("patient") or request.GET.get("patient")
    if chosen_id:
        try:
            chosen = Patient.objects.filter(institution=institution, pk=chosen_id).first()
        except ValidationError:
            chosen = None
    day = _today(institution)
    now_local = timezone.now().astimezone(ZoneInfo(institution.time_zone))
    initial = {"scheduled_date": day, "scheduled_time": (now_local + dt.timedelta(minutes=30)).strftime("%H:%M")}
    order_form = OrderForm(request.POST or None, institution=institution, initial=initial)
    patient_form = PatientForm(request.POST or None, prefix="new") if chosen is None else None
    duplicates: list[Patient] = []
    new_patient = patient_form.cleaned_data if patient_form is not None and patient_form.is_valid() else None
    if request.method == "POST" and order_form.is_valid() and (chosen is not None or new_patient is not None):
        try:
            patient = chosen or _register_patient(institution, new_patient or {}, request)
            data = order_form.cleaned_data
            order = actions.do_create_order(
                institution,
                patient=patient,
                procedure=data["procedure"],
                station=data["station"],
                scheduled_at=order_form.scheduled_at(),
                priority=data["priority"],
                referring_physician=data["referring_physician"],
                clinical_info=data["clinical_info"],
                actor=request.user,
                request=request,
            )
        except ValidationError as exc:
            if new_patient is not None and hasattr(exc, "error_dict"):
                if any(e.code == "possible_duplicate" for e in exc.error_dict.get("name", [])):
                    duplicates = actions.likely_duplicates(institution, new_patient["name"], new_patient["birth_date"])
            fields = exc.error_dict if hasattr(exc, "error_dict") else {}
            if patient_form is not None and "birth_date" in fields:
                patient_form.add_error("birth_date", fields["birth_date"])
            else:
                for message in exc.messages:
                    order_form.add_error(None, message)
        else:
            messages.success(request, f"Exam {order.accession_number} registered for {display_name(patient.name)}.")
            return redirect("worklist-show-order", pk=order.pk)
    return render(
        request,
        "worklist/register.html",
        {
            "search": search,
            "found": found,
            "chosen": chosen,
            "order_form": order_form,
            "patient_form": patient_form,
            "duplicates": duplicates,
        },
    )


@login_required
def order_detail(request: HttpRequest, pk: Any) -> HttpResponse:
    order = access_order(request.user, pk)
    audit.record(
        "worklist.order.view",
        request=request,
        institution=order.institution_id,
        object_type="worklist.order",
        object_id=order.pk,
        patient_id=order.patient.patient_id,
    )
    return render(
        request,
        "worklist/order.html",
        {
            "order": order,
            "history": history(order),
            "steps": order.performed_steps.all(),
            "can_change": has_role(request.user, order.institution_id, Role.TECHNOLOGIST),
            "reason_form": ReasonForm(),
        },
    )


@login_required
def order_edit(request: HttpRequest, pk: Any) -> HttpResponse:
    order = access_order(request.user, pk, change=True)
    local = order.scheduled_at.astimezone(ZoneInfo(order.institution.time_zone))
    initial = {
        "procedure": order.procedure,
        "station": order.station,
        "scheduled_date": local.date(),
        "scheduled_time": local.strftime("%H:%M"),
        "priority": order.priority,
        "referring_physician": order.referring_physician,
        "clinical_info": order.clinical_info,
    }
    form = OrderForm(request.POST or None, institution=order.institution, initial=initial)
    if order.state not in Order.OPEN_STATES:
        # The exam has started: what, where and when are history now.
        for name in ("procedure", "station", "scheduled_date", "scheduled_time"):
            form.fields[name].disabled = True
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        changes = {
            "procedure": data["procedure"],
            "station": data["station"],
            "scheduled_at": form.scheduled_at(),
            "priority": data["priority"],
            "referring_physician": data["referring_physician"],
            "clinical_info": data["clinical_info"],
        }
        if order.state not in Order.OPEN_STATES:
            # Rescheduling fields are fixed once the exam started; keep what is shown.
            changes = {k: v for k, v in changes.items() if k in actions.LATE_FIELDS}
        try:
            actions.do_edit_order(order, changes=changes, actor=request.user, request=request)
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            messages.success(request, f"Exam {order.accession_number} updated.")
            return redirect("worklist-show-order", pk=order.pk)
    return render(request, "worklist/order_edit.html", {"order": order, "form": form})


def _order_action(request: HttpRequest, pk: Any, run: Any, done: str) -> HttpResponse:
    order = access_order(request.user, pk, change=True)
    try:
        run(order)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    except TransitionNotAllowed:
        messages.error(request, f"Not possible while the exam is {order.get_state_display().lower()}.")
    else:
        messages.success(request, f"Exam {order.accession_number} {done}.")
    back = request.POST.get("next", "")
    if back.startswith("/") and not back.startswith("//"):
        return redirect(back)
    return redirect("worklist-show-order", pk=order.pk)


@login_required
@require_POST
def order_arrive(request: HttpRequest, pk: Any) -> HttpResponse:
    return _order_action(request, pk, lambda o: actions.do_arrive_order(o, actor=request.user), "marked arrived")


WITHDRAW = {
    "cancel": (actions.do_cancel_order, "cancelled"),
    "discontinue": (actions.do_discontinue_order, "discontinued"),
}


@login_required
@require_POST
def order_withdraw(request: HttpRequest, pk: Any, how: str) -> HttpResponse:
    """Cancel (not started) or discontinue (started) an exam, with the reason given."""
    do, done = WITHDRAW[how]
    reason = request.POST.get("reason", "")
    return _order_action(request, pk, lambda o: do(o, reason=reason, actor=request.user), done)


# Reconciliation --------------------------------------------------------------


@login_required
def reconciliation_list(request: HttpRequest) -> HttpResponse:
    institution = _institution(request, Role.TECHNOLOGIST)
    items = list(
        visible_reconciliation(request.user)
        .filter(institution=institution, resolved_at__isnull=True)
        .select_related("study__patient")
        .order_by("created_at")
    )
    audit.record("worklist.reconciliation.list", request=request, institution=institution, detail={"count": len(items)})
    template = "worklist/_reconciliation_rows.html" if request.GET.get("fragment") else "worklist/reconciliation.html"
    return render(request, template, {"items": items})


def candidate_orders(item: Any, query: str = "") -> list[Order]:
    """Orders a queued study may belong to: same patient ID or accession, or same day and modality."""
    study = item.study
    orders = Order.objects.filter(institution_id=item.institution_id, study__isnull=True).exclude(
        state=Order.State.CANCELLED
    )
    match = Q(patient__patient_id=study.patient.patient_id)
    if study.accession_number:
        match |= Q(accession_number=study.accession_number)
    modalities = [m for m in study.modalities.split("\\") if m]
    if study.study_date and modalities:
        match |= Q(scheduled_date=study.study_date, modality__in=modalities)
    if query:
        match = Q(accession_number__iexact=query) | Q(patient__patient_id__iexact=query)
    return list(orders.filter(match).select_related("patient", "procedure", "station").order_by("scheduled_at")[:50])


@login_required
def reconciliation_item(request: HttpRequest, pk: Any) -> HttpResponse:
    item = access_reconciliation_item(request.user, pk)
    query = request.GET.get("q", "").strip()
    audit.record(
        "worklist.reconciliation.view",
        request=request,
        institution=item.institution_id,
        object_type="archive.study",
        object_id=item.study_id,
        patient_id=item.study.patient.patient_id,
    )
    return render(
        request,
        "worklist/reconciliation_item.html",
        {
            "item": item,
            "study": item.study,
            "candidates": candidate_orders(item, query),
            "q": query,
            "dismiss_form": DismissForm(),
            "patient_form": PatientForm(prefix="fix", initial=patient_initial(item.study.patient)),
        },
    )


@login_required
@require_POST
def reconciliation_link(request: HttpRequest, pk: Any) -> HttpResponse:
    item = access_reconciliation_item(request.user, pk)
    form = LinkForm(request.POST)
    order = None
    if form.is_valid():
        order = Order.objects.filter(institution_id=item.institution_id, pk=form.cleaned_data["order"]).first()
    if order is None:
        messages.error(request, "Choose one of this institution's orders.")
        return redirect("worklist-show-reconciliation", pk=item.pk)
    try:
        actions.do_link_study(item.study, order, actor=request.user, reason="linked by a technologist", request=request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("worklist-show-reconciliation", pk=item.pk)
    messages.success(request, f"Study linked to exam {order.accession_number}.")
    return redirect(reverse("worklist-list-reconciliation"))


@login_required
@require_POST
def reconciliation_correct(request: HttpRequest, pk: Any) -> HttpResponse:
    """Correct the patient the study's images name, then match it to its exam again."""
    item = access_reconciliation_item(request.user, pk)
    form = PatientForm(request.POST, prefix="fix")
    if not form.is_valid():
        messages.error(request, " ".join(str(m) for errors in form.errors.values() for m in errors))
        return redirect("worklist-show-reconciliation", pk=item.pk)
    data = form.cleaned_data
    try:
        order = actions.do_correct_study_patient(
            item,
            name=data["name"],
            patient_id=data["patient_id"],
            birth_date=data["birth_date"],
            sex=data["sex"],
            actor=request.user,
            request=request,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("worklist-show-reconciliation", pk=item.pk)
    if order is None:
        messages.success(request, "Patient corrected. No exam matches yet: link one below.")
        return redirect("worklist-show-reconciliation", pk=item.pk)
    messages.success(request, f"Patient corrected; the study is linked to exam {order.accession_number}.")
    return redirect("worklist-list-reconciliation")


@login_required
@require_POST
def reconciliation_dismiss(request: HttpRequest, pk: Any) -> HttpResponse:
    item = access_reconciliation_item(request.user, pk)
    form = DismissForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why this study needs no order.")
        return redirect("worklist-show-reconciliation", pk=item.pk)
    try:
        actions.do_dismiss_reconciliation(item, note=form.cleaned_data["note"], actor=request.user, request=request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("worklist-list-reconciliation")


# The catalogue (institution administrators) ------------------------------------


@login_required
def catalogue(request: HttpRequest) -> HttpResponse:
    institution = _institution(request, Role.INSTITUTION_ADMIN)
    return render(
        request,
        "worklist/catalogue.html",
        {
            "procedures": Procedure.objects.filter(institution=institution).order_by("-is_active", "modality", "name"),
            "stations": Station.objects.filter(institution=institution).select_related("node").order_by("name"),
        },
    )


def _edit_catalogue(request: HttpRequest, model: Any, form_class: Any, pk: Any, what: str) -> HttpResponse:
    institution = _institution(request, Role.INSTITUTION_ADMIN)
    instance = None
    if pk is not None:
        instance = model.objects.filter(institution=institution, pk=pk).first()
        if instance is None:
            raise Http404(f"No such {what}")
    form = form_class(request.POST or None, instance=instance, institution=institution)
    if request.method == "POST" and form.is_valid():
        item = actions.do_save_catalogue_item(
            form.save(commit=False), institution=institution, acting_user=request.user, request=request
        )
        messages.success(request, f"{item} saved.")
        return redirect("worklist-show-catalogue")
    return render(request, "worklist/catalogue_edit.html", {"form": form, "what": what, "instance": instance})


@login_required
def procedure_edit(request: HttpRequest, pk: Any = None) -> HttpResponse:
    return _edit_catalogue(request, Procedure, ProcedureForm, pk, "procedure")


@login_required
def station_edit(request: HttpRequest, pk: Any = None) -> HttpResponse:
    return _edit_catalogue(request, Station, StationForm, pk, "station")


# Home page ---------------------------------------------------------------------


def home_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    """The technologist's panel on the home page: today's exams and the reconciliation queue."""
    if institution is None or Role.TECHNOLOGIST not in roles:
        return []
    today = _today(institution)
    orders = list(
        Order.objects.filter(institution=institution, scheduled_date=today, state__in=Order.WORKLIST_STATES)
        .select_related("patient", "procedure", "station")
        .order_by("scheduled_at")[:10]
    )
    counts = dict(
        Order.objects.filter(institution=institution, scheduled_date=today)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    if orders:
        audit.record(
            "worklist.order.list",
            request=request,
            institution=institution,
            detail={"panel": "home", "orders": [str(o.pk) for o in orders]},
        )
    context = {
        "orders": orders,
        "counts": [(state.label, counts.get(state.value, 0)) for state in Order.State if counts.get(state.value)],
        "unreconciled": ReconciliationItem.objects.filter(institution=institution, resolved_at__isnull=True).count(),
    }
    return [Panel("Today's exams", "worklist/home_panel.html", context, order=110, role=Role.TECHNOLOGIST.label)]
