"""``manage.py rebuild_statistics [--institution SLUG]``: recompute the statistics' summary rows."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pacs_cloud.models import Institution
from workflow.statistics.record import rebuild


class Command(BaseCommand):
    help = "Rebuild the statistics' per-study summary rows from the archive, worklist and workflow tables."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--institution", help="Only this institution (its slug).")
        parser.add_argument("--batch", type=int, default=2000, help="Studies per transaction.")

    def handle(self, *args: Any, **options: Any) -> None:
        institution = None
        if options["institution"]:
            institution = Institution.objects.filter(slug=options["institution"]).first()
            if institution is None:
                raise CommandError(f"No institution {options['institution']!r}.")
        started = time.monotonic()
        count = rebuild(institution=institution, batch=options["batch"])
        self.stdout.write(f"{count} studies summarised in {time.monotonic() - started:.1f} s")
