"""Check the stored copies of an institution's, a study's or every object against their SHA-256.

Exits with status 1 and names each bad copy (missing or corrupt) when any
was found, repaired or not; ``--no-repair`` only reports.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from archive.copies.actions import do_replicate_instance, do_verify_copy
from archive.models import Instance, ObjectCopy
from pacs_cloud.models import Institution


class Command(BaseCommand):
    help = "Verify the SHA-256 of stored copies (an institution, a study or all), repairing bad ones from good ones."

    def add_arguments(self, parser: Any) -> None:
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--institution", help="the institution's slug")
        scope.add_argument("--study", help="a Study Instance UID")
        scope.add_argument("--all", action="store_true", help="every stored object")
        parser.add_argument("--no-repair", action="store_true", help="report bad copies without repairing them")

    def handle(self, *args: Any, **options: Any) -> None:
        instances = Instance.objects.all()
        if options["institution"]:
            institution = Institution.objects.filter(slug=options["institution"]).first()
            if institution is None:
                raise CommandError(f"no institution {options['institution']!r}")
            instances = instances.filter(institution=institution)
        elif options["study"]:
            instances = instances.filter(series__study__study_instance_uid=options["study"])
            if not instances.exists():
                raise CommandError(f"no study {options['study']!r}")
        repair = not options["no_repair"]
        checked = bad = unreachable = 0
        copies = ObjectCopy.objects.filter(instance__in=instances).order_by("instance_id", "pk")
        for pk in copies.values_list("pk", flat=True).iterator():
            check = do_verify_copy(pk, repair=repair)
            checked += 1
            if check.status == "unreachable":
                unreachable += 1
                self.stderr.write(f"UNREACHABLE {check.location} {check.key}")
            elif check.status != ObjectCopy.Status.GOOD:
                bad += 1
                outcome = " (repaired)" if check.repaired else ""
                self.stdout.write(f"{check.status.upper()} {check.location} {check.key}{outcome}")
        if repair:
            for instance_pk in instances.values_list("pk", flat=True).iterator():
                do_replicate_instance(instance_pk)
        self.stdout.write(f"{checked} copies checked: {bad} bad, {unreachable} unreachable")
        if bad or unreachable:
            raise SystemExit(1)
