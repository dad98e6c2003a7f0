"""Who may see and change orders, built on :mod:`pacs_cloud.access`.

Members holding a clinical role at an institution read its orders; its
technologists register and change them and work its reconciliation queue.
Lookups raise ``Http404`` alike for "missing" and "not yours".
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from pacs_cloud.access import has_role, institution_ids, role_permission
from pacs_cloud.models import CLINICAL_ROLES, Role

from .models import Order, Procedure, ReconciliationItem, Station

IsClinicalOrTechnologist = role_permission(*CLINICAL_ROLES)


def visible_orders(user: Any) -> QuerySet[Order]:
    return Order.objects.filter(institution_id__in=institution_ids(user, CLINICAL_ROLES))


def _get(qs: QuerySet, pk: object, what: str) -> Any:
    try:
        return qs.get(pk=UUID(str(pk)))
    except (ValueError, qs.model.DoesNotExist):
        raise Http404(f"No such {what}") from None


def access_order(user: Any, pk: object, *, change: bool = False) -> Order:
    """An order ``user`` may read; with ``change``, one they may also change (403 if only read)."""
    order = _get(
        visible_orders(user).select_related("patient", "procedure", "station__node", "institution"), pk, "order"
    )
    if change and not has_role(user, order.institution_id, Role.TECHNOLOGIST):
        raise PermissionDenied("Only the institution's technologists change orders.")
    return order


def technologist_institution_ids(user: Any) -> set[UUID]:
    return institution_ids(user, [Role.TECHNOLOGIST])


def visible_reconciliation(user: Any) -> QuerySet[ReconciliationItem]:
    return ReconciliationItem.objects.filter(institution_id__in=technologist_institution_ids(user))


def access_reconciliation_item(user: Any, pk: object) -> ReconciliationItem:
    return _get(visible_reconciliation(user).select_related("study__patient", "institution"), pk, "queue item")


def visible_procedures(user: Any) -> QuerySet[Procedure]:
    return Procedure.objects.filter(institution_id__in=institution_ids(user, CLINICAL_ROLES))


def visible_stations(user: Any) -> QuerySet[Station]:
    return Station.objects.filter(institution_id__in=institution_ids(user, CLINICAL_ROLES)).select_related("node")
