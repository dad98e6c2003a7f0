"""Configuration errors of the statistics, reported by ``manage.py check``."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_statistics(app_configs: Any, **kwargs: Any) -> list[Error]:
    problems: list[Error] = []
    weights = settings.STATISTICS_MODALITY_WEIGHTS
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in weights.items()
    ):
        problems.append(
            Error(
                "STATISTICS_MODALITY_WEIGHTS is not a JSON object of modalities to non-negative numbers",
                hint='e.g. {"CT": 1.0, "MR": 1.5, "*": 1.0}',
                id="workflow.E101",
            )
        )
    try:
        ZoneInfo(settings.STATISTICS_PLATFORM_TIME_ZONE)
    except (ValueError, KeyError):
        problems.append(Error("STATISTICS_PLATFORM_TIME_ZONE is not an IANA time zone", id="workflow.E102"))
    if settings.STATISTICS_EDGE_SAMPLE_SECONDS <= 0:
        problems.append(Error("STATISTICS_EDGE_SAMPLE_SECONDS must be positive", id="workflow.E103"))
    return problems
