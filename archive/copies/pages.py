"""Where the copies are: a study's copies, an institution's storage and cost, every location's health.

Institution administrators see their institution's storage per tier and
site with its monthly cost, its open copy alerts, and set its copy policy;
the platform administrator sees every location's health, the replication
backlog and the scrubber's progress. A study's copies are shown to whoever
may open the study.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from pacs_cloud import audit
from pacs_cloud.models import Role
from pacs_cloud.tenancy import current_institution_as

from ..access import access_study
from ..models import CopyAlert, LifecycleRule, ObjectCopy, StorageLocation
from . import actions, lifecycle
from .tasks import REPLICATION_LOOKBACK, short_of_copies

GB = Decimal(1024**3)


def monthly_cost(size: int, per_gb_month: Decimal) -> Decimal:
    return (Decimal(size) / GB * per_gb_month).quantize(Decimal("0.01"))


def storage_by_location(copies: Any) -> list[dict[str, Any]]:
    """Bytes and objects per location (with its site, tier and monthly cost), from a queryset of copies."""
    rows = copies.values("location").annotate(count=Count("pk"), size=Coalesce(Sum("size"), 0)).order_by()
    by_id = {loc.pk: loc for loc in StorageLocation.objects.all()}
    result = []
    for row in rows:
        location = by_id[row["location"]]
        result.append(
            {
                "location": location,
                "objects": row["count"],
                "size": row["size"],
                "cost": monthly_cost(row["size"], location.cost_per_gb_month),
            }
        )
    return sorted(result, key=lambda r: (r["location"].tier, r["location"].site, r["location"].name))


@login_required
@require_http_methods(["GET", "POST"])
def institution_storage(request: HttpRequest) -> HttpResponse:
    """The institution's storage per tier and site with its monthly cost, its copy alerts and its copy policy."""
    institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
    if request.method == "POST":
        try:
            actions.do_save_copy_policy(
                institution,
                copies=int(request.POST.get("copies", "0")),
                sites=int(request.POST.get("sites", "0")),
                location_ids=request.POST.getlist("locations"),
                acting_user=request.user,
            )
        except ValueError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "The copy policy is saved.")
        return redirect("archive-edit-storage")
    rows = storage_by_location(ObjectCopy.objects.filter(instance__institution=institution))
    alerts = (
        CopyAlert.objects.filter(institution=institution, cleared_at=None)
        .select_related("instance__series__study")
        .order_by("-raised_at")
    )
    need = actions.requirement(institution.pk)
    rules = LifecycleRule.objects.filter(institution=institution).select_related("target")
    context = {
        "plans": [lifecycle.dry_run(rule) for rule in rules],
        "cold_locations": StorageLocation.objects.exclude(tier=StorageLocation.Tier.ONLINE),
        "institution": institution,
        "rows": rows,
        "total_size": sum(r["size"] for r in rows),
        "total_cost": sum((r["cost"] for r in rows), Decimal(0)),
        "alert_count": alerts.count(),
        "alerts": alerts[:50],
        "requirement": need,
        "own_policy": hasattr(institution, "copy_policy"),
        "locations": StorageLocation.objects.exclude(tier=StorageLocation.Tier.ARCHIVE),
    }
    return render(request, "archive/storage.html", context)


@login_required
@require_http_methods(["POST"])
def save_lifecycle_rule(request: HttpRequest) -> HttpResponse:
    """Add or change one of the institution's lifecycle rules (the storage page shows its dry-run)."""
    institution = current_institution_as(request, Role.INSTITUTION_ADMIN)
    key = _uuid_or_none(request.POST.get("target"))
    target = StorageLocation.objects.filter(pk=key).first() if key else None
    try:
        if target is None:
            raise ValueError("choose where the rule moves studies to")
        idle = request.POST.get("min_idle_days", "").strip()
        lifecycle.do_save_lifecycle_rule(
            institution,
            name=request.POST.get("name", ""),
            target=target,
            min_age_days=int(request.POST.get("min_age_days", "365")),
            min_idle_days=int(idle) if idle else None,
            acting_user=request.user,
        )
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "The lifecycle rule is saved; its dry-run is below.")
    return redirect("archive-edit-storage")


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value or "")
    except ValueError:
        return None


@login_required
@audit.records_refusal("study.view_refused", object_type="study", key="study_id")
def study_copies(request: HttpRequest, study_id: str) -> HttpResponse:
    """Where each of a study's objects is kept: copies per location, tier and site, and their last check."""
    study = access_study(request.user, pk=study_id)
    audit.record(
        "study.view",
        request=request,
        institution=study.institution_id,
        object_type="study",
        object_id=study.pk,
        patient_id=study.patient.patient_id,
        detail={"via": "archive.copies"},
    )
    copies = ObjectCopy.objects.filter(instance__series__study=study)
    rows = (
        copies.values("location")
        .annotate(
            count=Count("pk"),
            good=Count("pk", filter=Q(status=ObjectCopy.Status.GOOD)),
            size=Coalesce(Sum("size"), 0),
            oldest_check=Min(Coalesce("verified_at", "written_at")),
        )
        .order_by()
    )
    by_id = {loc.pk: loc for loc in StorageLocation.objects.all()}
    context = {
        "study": study,
        "rows": [{**row, "location": by_id[row["location"]]} for row in rows],
        "instances": study.num_instances,
        "requirement": actions.requirement(study.institution_id),
    }
    return render(request, "archive/study_copies.html", context)


@login_required
def locations_health(request: HttpRequest) -> HttpResponse:
    """The platform administrator's view of every location: health, objects, replication backlog, scrub progress."""
    if not getattr(request.user, "is_platform_admin", False):
        raise Http404("This page is for the platform administrator.")
    now = timezone.now()
    cycle_start = now - dt.timedelta(days=settings.FIXITY_CYCLE_DAYS)
    counts = {
        row["location"]: row
        for row in ObjectCopy.objects.values("location")
        .annotate(
            count=Count("pk"),
            size=Coalesce(Sum("size"), 0),
            bad=Count("pk", filter=~Q(status=ObjectCopy.Status.GOOD)),
            checked=Count("pk", filter=Q(verified_at__gte=cycle_start)),
        )
        .order_by()
    }
    rows = []
    for location in StorageLocation.objects.all():
        found: dict[str, Any] = {"count": 0, "size": 0, "bad": 0, "checked": 0, **counts.get(location.pk, {})}
        progress = 100.0 * found["checked"] / found["count"] if found["count"] else 100.0
        rows.append({"location": location, **found, "scrubbed_percent": progress})
    context = {
        "rows": rows,
        "backlog": short_of_copies(since=now - REPLICATION_LOOKBACK).count(),
        "open_alerts": CopyAlert.objects.filter(cleared_at=None).count(),
        "cycle_days": settings.FIXITY_CYCLE_DAYS,
    }
    return render(request, "archive/locations.html", context)
