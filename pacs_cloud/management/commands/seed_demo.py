"""Create or refresh the demo (idempotent): ``manage.py seed_demo``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import import_string

from pacs_cloud.demo import DEMO_PASSWORD


class Command(BaseCommand):
    help = "Create or refresh the demo institutions, users and data. Safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        logins: list[str] = []
        for dotted in settings.DEMO_SEEDERS:
            result = import_string(dotted)()
            if isinstance(result, list):
                logins.extend(result)
        self.stdout.write(self.style.SUCCESS("Demo ready. Sign in at http://127.0.0.1:8000/ with:"))
        for line in logins:
            self.stdout.write(f"  {line}")
        self.stdout.write(f"  (every demo password: {DEMO_PASSWORD})")
