"""Home-page panels of the reading workflow (``settings.HOME_PANELS``).

A radiologist sees what is offered to them and what they hold (counts and the
most urgent offers, without patient identity); an institution administrator
sees the hospital's open reading tasks, breaches and current routing policy.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from pacs_cloud.home import Panel
from pacs_cloud.models import Institution, Role

from . import access
from .actions import current_policy
from .models import HELD_STATES, TASK_OPEN_STATES, ReadingTask

OFFER_ROWS = 5


def reading_panels(request: HttpRequest, institution: Institution | None, roles: set[str]) -> list[Panel]:
    panels: list[Panel] = []
    if institution is None:
        return panels
    if Role.RADIOLOGIST in roles:
        who = access.reader(request.user)
        offered = (
            access.offered_tasks(request.user, who).select_related("institution").order_by("priority_rank", "due_at")
        )
        context: dict[str, Any] = {
            "top": list(offered[:OFFER_ROWS]),
            "offered": offered.order_by()[:1001].count(),
            "held": access.held_tasks(request.user).count(),
            "now": timezone.now(),
        }
        panels.append(Panel("Reading", "workflow/home/reader.html", context, order=250, role=Role.RADIOLOGIST.label))
    if Role.INSTITUTION_ADMIN in roles:
        tasks = ReadingTask.objects.filter(institution=institution)
        context = {
            "open": tasks.filter(state__in=TASK_OPEN_STATES).count(),
            "held": tasks.filter(state__in=HELD_STATES).count(),
            "breached": tasks.filter(state__in=[*TASK_OPEN_STATES, *HELD_STATES], breached_at__isnull=False).count(),
            "policy": current_policy(institution),
        }
        panels.append(
            Panel("Reading workflow", "workflow/home/admin.html", context, order=610, role=Role.INSTITUTION_ADMIN.label)
        )
    return panels
