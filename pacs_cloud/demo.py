"""The demo's institutions and users (DESIGN.md, fixed points: demo)."""

from __future__ import annotations

from django.db import transaction

from .models import Institution, Membership, Role, User

DEMO_PASSWORD = "demo-password"  # noqa: S105 (the published demo password)

INSTITUTIONS = [
    # slug, name, kind, accession prefix, issuer, time zone
    ("riverside", "Riverside County Hospital", Institution.Kind.HOSPITAL, "RCH", "RIVERSIDE", "Asia/Shanghai"),
    ("hillside", "Hillside Township Hospital", Institution.Kind.HOSPITAL, "HTH", "HILLSIDE", "Asia/Shanghai"),
    ("central", "Central City Hospital", Institution.Kind.HOSPITAL, "CCH", "CENTRAL", "Asia/Shanghai"),
    ("expert", "Expert Reading Centre", Institution.Kind.READING_CENTRE, "ERC", "EXPERT", "Asia/Shanghai"),
]

USERS = [
    # username, display name, institution slug, role
    ("admin@riverside", "Riverside administrator", "riverside", Role.INSTITUTION_ADMIN),
    ("tech@riverside", "Li Na (CT technologist)", "riverside", Role.TECHNOLOGIST),
    ("tech@hillside", "Zhou Min (MR technologist)", "hillside", Role.TECHNOLOGIST),
    ("rad@riverside", "Dr Wang Fang (radiologist)", "riverside", Role.RADIOLOGIST),
    ("rad@expert", "Dr Chen Jie (expert reader)", "expert", Role.RADIOLOGIST),
    ("coord@riverside", "Zhang Wei (referrals)", "riverside", Role.REFERRAL_COORDINATOR),
    ("coord@central", "Liu Yang (referrals)", "central", Role.REFERRAL_COORDINATOR),
    ("doc@riverside", "Dr Huang Lei (physician)", "riverside", Role.CLINICIAN),
    ("doc@central", "Dr Zhao Qiang (physician)", "central", Role.CLINICIAN),
]


@transaction.atomic
def seed() -> list[str]:
    """Create or refresh the demo tenants and accounts; returns the login lines."""
    institutions = {}
    for slug, name, kind, prefix, issuer, tz in INSTITUTIONS:
        institutions[slug], _ = Institution.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "kind": kind,
                "accession_prefix": prefix,
                "patient_id_issuer": issuer,
                "time_zone": tz,
            },
        )
    lines = []
    for username, display, slug, role in USERS:
        user = _user(username, display)
        Membership.objects.get_or_create(user=user, institution=institutions[slug], role=role)
        lines.append(f"{username:<18} {role.label} at {institutions[slug].name}")
    platform = _user("platform", "Platform administrator")
    if not platform.is_platform_admin:
        platform.is_platform_admin = platform.is_staff = platform.is_superuser = True
        platform.save(update_fields=["is_platform_admin", "is_staff", "is_superuser"])
    lines.append(f"{'platform':<18} Platform administrator (Django admin at /admin/)")
    return lines


def _user(username: str, display: str) -> User:
    user, created = User.objects.get_or_create(username=username, defaults={"display_name": display})
    if created or not user.check_password(DEMO_PASSWORD):
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])
    return user
