"""Configuration errors of the archive, reported by ``manage.py check``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_storage(app_configs: Any, **kwargs: Any) -> list[Error]:
    problems: list[Error] = []
    url = urlparse(settings.STORAGE_URL)
    if url.scheme not in ("file", "s3"):
        problems.append(
            Error(
                f"STORAGE_URL {settings.STORAGE_URL!r} is neither file:// nor s3://",
                hint="Use file:///absolute/path or s3://bucket[/prefix].",
                id="archive.E001",
            )
        )
    elif url.scheme == "s3":
        # (No keys is fine: boto3 then uses its own credential chain, e.g. instance roles.)
        if not url.netloc:
            problems.append(Error("STORAGE_URL names no bucket", hint="s3://bucket[/prefix]", id="archive.E002"))
    if settings.MAX_INSTANCE_BYTES <= 0:
        problems.append(Error("MAX_INSTANCE_BYTES must be positive", id="archive.E003"))
    if settings.STUDY_STABILITY_SECONDS <= 0:
        problems.append(Error("STUDY_STABILITY_SECONDS must be positive", id="archive.E004"))
    return problems
