"""Check the audit trail's hash chain: ``manage.py verify_audit``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pacs_cloud.audit import first_broken_link
from pacs_cloud.models import AuditEvent


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain and report the first broken link."

    def handle(self, *args: Any, **options: Any) -> None:
        broken = first_broken_link()
        if broken is not None:
            raise CommandError(
                f"Audit chain broken at event {broken.id} ({broken.time.isoformat()}, {broken.action}): "
                "its content or its link to the previous event was altered, or an event before it was removed."
            )
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {AuditEvent.objects.count()} events."))
