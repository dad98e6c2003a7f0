"""What each onboarding step needs, whether it is done, and the routing-policy templates."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from archive.models import DicomNode, EdgeGateway, Study
from pacs_cloud.models import Institution, Invitation, Membership, Role
from worklist.models import Procedure

from ..actions import current_policy
from ..models import RadiologistPool

# An edge counts as connected while its last heartbeat is this recent (it
# reports every EDGE_HEARTBEAT_SECONDS, 30 s by default).
EDGE_CONNECTED_SECONDS = 120


@dataclass
class Step:
    key: str
    title: str
    done: bool
    detail: str


@dataclass
class Status:
    steps: list[Step]
    edge_connected: bool
    first_study_at: datetime | None

    @property
    def complete(self) -> bool:
        return all(step.done for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": [asdict(step) for step in self.steps],
            "edge_connected": self.edge_connected,
            "first_study_at": self.first_study_at,
            "complete": self.complete,
        }


def edges(institution: Institution) -> list[EdgeGateway]:
    return list(EdgeGateway.objects.filter(institution=institution, revoked_at__isnull=True).order_by("name"))


def is_connected(edge: EdgeGateway, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    return edge.last_seen_at is not None and now - edge.last_seen_at < timedelta(seconds=EDGE_CONNECTED_SECONDS)


def status(institution: Institution) -> Status:
    nodes = DicomNode.objects.filter(institution=institution, is_active=True).count()
    procedures = Procedure.objects.filter(institution=institution, is_active=True).count()
    people = (
        Membership.objects.filter(institution=institution, is_active=True)
        .exclude(role=Role.INSTITUTION_ADMIN)
        .exclude(user__edge_gateway__isnull=False)
        .values("user")
        .distinct()
        .count()
    )
    invited = Invitation.objects.filter(institution=institution, accepted_at__isnull=True).count()
    policy = current_policy(institution)
    gateways = edges(institution)
    connected = [edge for edge in gateways if is_connected(edge)]
    first = Study.objects.filter(institution=institution).order_by("received_at").first()
    steps = [
        Step("modalities", "Modalities", nodes > 0, f"{nodes} DICOM node{'s' if nodes != 1 else ''}"),
        Step(
            "procedures",
            "Procedure catalogue",
            procedures > 0,
            f"{procedures} procedure{'s' if procedures != 1 else ''}",
        ),
        Step("users", "Users and roles", people > 0, f"{people} member{'s' if people != 1 else ''}, {invited} invited"),
        Step(
            "routing",
            "Routing policy",
            policy is not None,
            f"version {policy.version}: {policy.name}" if policy else "none",
        ),
        Step(
            "edge",
            "Edge gateway",
            bool(connected),
            "connected" if connected else ("enrolled, not connected" if gateways else "none enrolled"),
        ),
        Step("test_image", "Test image", first is not None, "received" if first else "waiting for the first study"),
    ]
    return Status(steps, bool(connected), first.received_at if first else None)


def edge_command(cloud_url: str, token: str) -> str:
    """The one command that starts the edge gateway on the hospital's server (README, "The edge gateway")."""
    env = f"PACS_ROLE=edge CLOUD_URL={shlex.quote(cloud_url)} EDGE_TOKEN={shlex.quote(token)}"
    return f"{env} python manage.py edge_gateway"


# Routing-policy templates (workflow.policy's definition format) --------------------


@dataclass(frozen=True)
class RoutingTemplate:
    key: str
    title: str
    needs_pool: bool = False

    def definition(self, pool: RadiologistPool | None = None) -> dict[str, Any]:
        if self.key == "own":
            return {"rules": [{"name": "Every study", "offer_to": [{"kind": "own"}]}]}
        if self.key == "own_stat":
            return {
                "rules": [
                    {
                        "name": "Stat studies",
                        "when": {"priorities": ["stat"]},
                        "offer_to": [{"kind": "own"}],
                        "sla_minutes": {"stat": 30},
                    },
                    {"name": "Every study", "offer_to": [{"kind": "own"}]},
                ]
            }
        assert pool is not None
        return {"rules": [{"name": "Every study", "offer_to": [{"kind": "pool", "pool": str(pool.pk)}]}]}


ROUTING_TEMPLATES = {
    t.key: t
    for t in (
        RoutingTemplate("own", "Our own radiologists read every study"),
        RoutingTemplate("own_stat", "Our own radiologists; stat studies within 30 minutes"),
        RoutingTemplate("pool", "Every study to a reading pool we have an agreement with", needs_pool=True),
    )
}


def agreed_pools(institution: Institution) -> list[RadiologistPool]:
    """Pools with an active reading agreement for ``institution`` (the pool template's choices)."""
    return list(
        RadiologistPool.objects.filter(agreements__hospital=institution, agreements__is_active=True)
        .distinct()
        .order_by("name")
    )
