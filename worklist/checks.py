"""Configuration errors of the worklist, reported by ``manage.py check``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.checks import Error, register

# Accession Number is SH (16 characters), Patient ID LO (64), PS3.5 6.2.
LIMITS = {"WORKLIST_ACCESSION_FORMAT": 16, "WORKLIST_PATIENT_ID_FORMAT": 64}


def _template_error(name: str, template: str) -> str | None:
    if "{seq" not in template:
        return "it has no {seq} field, so it cannot give unique values"
    try:
        sample = template.format(prefix="X" * 6, date=dt.date(2099, 12, 31), seq=9999)
    except (KeyError, IndexError, ValueError) as exc:
        return f"it does not format: {exc}"
    if len(sample) > LIMITS[name]:
        return f"with a 6-character prefix it gives {sample!r}, over the {LIMITS[name]} characters DICOM allows"
    return None


@register()
def check_identifier_formats(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors = []
    for index, name in enumerate(("WORKLIST_ACCESSION_FORMAT", "WORKLIST_PATIENT_ID_FORMAT"), start=1):
        problem = _template_error(name, getattr(settings, name))
        if problem:
            errors.append(
                Error(
                    f"{name} {getattr(settings, name)!r}: {problem}",
                    hint="Fields: {prefix} (the institution's accession prefix), {date:%y%m%d}, {seq:05d}.",
                    id=f"worklist.E00{index}",
                )
            )
    return errors
