"""Join patients recorded twice at an institution (see ``do_merge_duplicate_patients``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from archive.actions import do_merge_duplicate_patients


class Command(BaseCommand):
    help = "Merge patients recorded twice (same Patient ID, blank and institution issuer) into one. Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        merged = do_merge_duplicate_patients()
        self.stdout.write(f"{merged} duplicate patient record(s) merged")
