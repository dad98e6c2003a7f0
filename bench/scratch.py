"""A benchmark's throw-away world: an emptied PostgreSQL database, migrated, and a scratch folder for its files."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def scratch_django(scratch: Path, *, database: str, objects: str = "objects") -> str:
    """Empty ``scratch`` and the database (``BENCH_DATABASE_URL`` or ``database``), set Django up on them, migrate.

    Returns the database URL. The default storage location is ``scratch/objects``.
    """
    url = os.environ.get("BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{database}")
    if not url.startswith("postgres"):
        sys.exit("BENCH_DATABASE_URL must point at PostgreSQL")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.environ["DATABASE_URL"] = url
    os.environ["PACS_DATA_DIR"] = str(scratch / "data")
    os.environ["STORAGE_URL"] = f"file://{scratch / objects}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_cloud.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    call_command("migrate", verbosity=0)
    return url
