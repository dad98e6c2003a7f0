"""Break-glass background work: the administrators' e-mail and the expiry sweep."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail

from .models import BreakGlassAccess


@shared_task
def mail_break_glass(access_id: str) -> int:
    """E-mail both institutions' administrators that someone broke glass (Django's mail backend)."""
    from .actions import administrators

    access = (
        BreakGlassAccess.objects.select_related("user", "institution", "via_institution").filter(pk=access_id).first()
    )
    if access is None:
        return 0
    to = [u.email for u in administrators(access) if u.email]
    if not to:
        return 0
    who = access.user.display_name or access.user.get_username()
    subject = f"Break-glass access by {who} ({access.via_institution.name})"
    body = (
        f"{who} of {access.via_institution.name} opened a study of {access.institution.name} "
        f"outside their grants, until {access.expires_at:%Y-%m-%d %H:%M} UTC.\n\n"
        f"Reason given: {access.reason}\n\n"
        f"Review it: {settings.CLOUD_URL}/break-glass/review/\n"
    )
    return send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, to)


@shared_task
def sweep_break_glass() -> int:
    from .actions import do_end_expired_break_glass

    return do_end_expired_break_glass()
