"""Rebuild the index of studies, series and instances from the objects stored in one location."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from archive.copies.rebuild import do_rebuild_index
from archive.models import StorageLocation


class Command(BaseCommand):
    help = (
        "Index every DICOM object stored in a location that the index lacks (after the database was lost); "
        "surviving rows are kept and never duplicated."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--location", required=True, help="the storage location's name (default: primary)")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["location"]
        if not StorageLocation.objects.filter(name=name).exists():
            known = ", ".join(StorageLocation.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"no storage location {name!r} (known: {known})")
        report = do_rebuild_index(name)
        for problem in report.problems:
            self.stderr.write(problem)
        for institution in report.institutions_restored:
            self.stdout.write(f"institution {institution} restored as a placeholder: rename it")
        self.stdout.write(
            f"{report.objects} objects in {name}: {report.indexed} indexed, {report.already} already in the index, "
            f"{len(report.problems)} problems"
        )
        if report.problems:
            raise SystemExit(1)
