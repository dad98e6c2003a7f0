"""The onboarding's own write: a routing policy started from a template (every other step is its app's action)."""

from __future__ import annotations

from typing import Any

from pacs_cloud.models import Institution

from ..actions import do_save_routing_policy
from ..models import RoutingPolicy
from ..policy import PolicyError
from .checklist import ROUTING_TEMPLATES, agreed_pools


def do_start_routing_from_template(
    institution: Institution, key: str, *, pool_id: Any = None, acting_user: Any, request: Any = None
) -> RoutingPolicy:
    """Save ``institution``'s next routing policy from template ``key`` (audited by the save).

    Raises ``PolicyError`` for an unknown template or a pool without an agreement.
    """
    template = ROUTING_TEMPLATES.get(key)
    if template is None:
        raise PolicyError([("template", f"Unknown template; choose one of {', '.join(ROUTING_TEMPLATES)}.")])
    pool = None
    if template.needs_pool:
        pool = next((p for p in agreed_pools(institution) if str(p.pk) == str(pool_id)), None)
        if pool is None:
            raise PolicyError([("pool", "Choose a pool that has a reading agreement with this hospital.")])
    return do_save_routing_policy(
        institution,
        template.definition(pool),
        acting_user=acting_user,
        name=template.title,
        note=f"started from the template “{template.title}”",
        request=request,
    )
