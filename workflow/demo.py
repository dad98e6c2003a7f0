"""The demo's reading workflow (DESIGN.md, fixed points: demo).

The Expert Reading Centre's pool reads for Riverside, Hillside and Central,
with ``rad@expert`` a member; Riverside offers each study to its own
radiologists and the expert pool at once; Hillside sends everything to the
expert pool; Central reads its own by day and sends nights and weekends to
the pool. Idempotent: a policy is saved again only when it changed.
"""

from __future__ import annotations

from datetime import date

from django.db import transaction

from pacs_cloud.models import Institution, Membership, Role, User

from .actions import current_policy, do_save_routing_policy
from .models import PoolMember, RadiologistPool, ReadingAgreement

POOL_NAME = "Expert Reading Centre pool"
HOSPITALS = ["riverside", "hillside", "central"]
SLA = {"stat": 60, "urgent": 240, "routine": 1440}


def _policies(pool_id: str) -> dict[str, tuple[str, dict]]:
    pool = {"kind": "pool", "pool": pool_id}
    return {
        "riverside": (
            "Own radiologists and the expert pool",
            {
                "rules": [
                    {
                        "name": "Stat studies",
                        "when": {"priorities": ["stat"]},
                        "offer_to": [{"kind": "own"}, pool],
                        "sla_minutes": {"stat": 30},
                        "escalation": [
                            {"offer_to": [{"kind": "person", "user": "rad@expert"}], "sla_minutes": {"stat": 15}}
                        ],
                    },
                    {
                        "name": "Every study",
                        "offer_to": [{"kind": "own"}, pool],
                        "escalation": [{"offer_to": [pool], "sla_minutes": {"urgent": 120, "routine": 480}}],
                    },
                ],
            },
        ),
        "hillside": (
            "Everything to the expert pool",
            {"rules": [{"name": "Every study", "offer_to": [pool]}]},
        ),
        "central": (
            "Nights and weekends to the expert pool",
            {
                "rules": [
                    {"name": "Nights", "when": {"hours": {"from": "20:00", "to": "08:00"}}, "offer_to": [pool]},
                    {"name": "Weekends", "when": {"weekdays": ["sat", "sun"]}, "offer_to": [pool]},
                    {
                        "name": "Mammography (double reading)",
                        "when": {"modalities": ["MG"]},
                        "offer_to": [{"kind": "own"}, pool],
                        "double_reading": True,
                    },
                ],
                "fallback": {"offer_to": [{"kind": "own"}], "escalation": [{"offer_to": [pool]}]},
            },
        ),
    }


@transaction.atomic
def seed() -> list[str]:
    institutions = {i.slug: i for i in Institution.objects.filter(slug__in=[*HOSPITALS, "expert"])}
    expert = institutions["expert"]
    pool, _ = RadiologistPool.objects.get_or_create(
        owner=expert,
        name=POOL_NAME,
        defaults={"description": "Subspecialty readers on call day and night for partner hospitals.", "claim_cap": 5},
    )
    reader = User.objects.get(username="rad@expert")
    member, _ = PoolMember.objects.get_or_create(
        pool=pool, user=reader, defaults={"subspecialties": ["neuro", "body", "breast"]}
    )
    member.credentialed_for.add(*(institutions[slug] for slug in HOSPITALS))
    for slug in HOSPITALS:
        ReadingAgreement.objects.get_or_create(
            hospital=institutions[slug], pool=pool, defaults={"sla_minutes": SLA, "valid_from": date(2024, 1, 1)}
        )
    admin = User.objects.filter(username="admin@riverside").first()
    lines = [f"{POOL_NAME}: rad@expert reads for Riverside, Hillside and Central"]
    for slug, (name, definition) in _policies(str(pool.pk)).items():
        institution = institutions[slug]
        current = current_policy(institution)
        if current is None or current.definition != definition or current.name != name:
            acting = (
                admin
                if admin
                and Membership.objects.filter(user=admin, institution=institution, role=Role.INSTITUTION_ADMIN).exists()
                else None
            )
            current = do_save_routing_policy(institution, definition, acting_user=acting, name=name, note="demo")
        lines.append(f"{institution.name} routing policy v{current.version}: {name}")
    return lines
