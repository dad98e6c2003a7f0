"""Daily rollups of the per-study rows, and the figures of long ranges read from them.

A page over a year would otherwise read (and sort, for the percentiles) every
study's row of the year. :class:`~.models.StatRollup` keeps, per institution,
local day, pool and one grouping of the charts, the counts and a histogram of
minutes per turnaround stage; a range of more than ``STATISTICS_ROLLUP_DAYS``
days sums these rows, and its medians and 90th percentiles are read from the
summed histograms: approximate, within one bucket (about 20 %) of the exact
figure. Shorter ranges, and filters the rollups do not carry (modality,
priority), keep the exact computation.

A change of a study's row only marks its day stale (one small insert in the
action's transaction: clinical actions never wait for statistics); the
stale days are recomputed from their :class:`~.models.StudyStat` rows, with
their months, by a Celery beat sweep and, for the institutions and range it
reads, by any long-range figure before it reads (``refresh_stale``), so the
figures are never older than the study rows. ``rebuild`` recomputes them all.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from .models import (
    HISTOGRAM_BUCKETS,
    HISTOGRAM_MAX_MINUTES,
    HISTOGRAM_STAGES,
    StaleRollupDay,
    StatRollup,
    StudyStat,
    histogram_column,
)

# The stages' ends, as figures.STAGES: (name, end, start).
STAGE_FIELDS = {
    "to_images": ("images_at", "registered_at"),
    "to_complete": ("completed_at", "images_at"),
    "to_claim": ("claimed_at", "completed_at"),
    "to_sign": ("signed_at", "claimed_at"),
    "total": ("signed_at", "images_at"),
}
DIMS = ("all", "modality", "priority", "body_part", "station", "reader")
# Each log-spaced bucket's upper edge is RATIO times its lower one.
RATIO = HISTOGRAM_MAX_MINUTES ** (1.0 / (HISTOGRAM_BUCKETS - 2))
COUNTS = ("studies", "signed", "offered", "met", "breached", "escalated", "escalations", "weighted")
HISTOGRAMS = [histogram_column(s, b) for s in HISTOGRAM_STAGES for b in range(HISTOGRAM_BUCKETS)]
TABLE = StatRollup._meta.db_table
STALE = StaleRollupDay._meta.db_table
SOURCE = StudyStat._meta.db_table


def rollup_days() -> int:
    return int(settings.STATISTICS_ROLLUP_DAYS)


def bucket_of(minutes: float) -> int:
    """The histogram bucket of a duration, as the SQL of ``_bucket_sql`` computes it."""
    if minutes < 1:
        return 0
    if minutes >= HISTOGRAM_MAX_MINUTES:
        return HISTOGRAM_BUCKETS - 1
    return min(HISTOGRAM_BUCKETS - 2, 1 + math.floor(math.log(minutes) / math.log(RATIO)))


def bucket_edges(bucket: int) -> tuple[float, float]:
    """A bucket's lower and upper edge in minutes (the last bucket's upper edge is its lower one)."""
    if bucket == 0:
        return 0.0, 1.0
    if bucket == HISTOGRAM_BUCKETS - 1:
        return HISTOGRAM_MAX_MINUTES, HISTOGRAM_MAX_MINUTES
    return RATIO ** (bucket - 1), RATIO**bucket


def quantiles(histogram: list[int], fractions: tuple[float, ...] = (0.5, 0.9)) -> list[float | None]:
    """Percentiles read from a histogram, placing a bucket's values evenly (in log scale) inside it.

    The rank is percentile_cont's, ``p * (n - 1)``; the value is interpolated
    between the bucket's edges, so it is off the exact one by at most a
    bucket's width.
    """
    total = sum(histogram)
    if not total:
        return [None for _ in fractions]
    out: list[float | None] = []
    for p in fractions:
        rank = p * (total - 1)
        before = 0
        for bucket, count in enumerate(histogram):
            if count and before + count > rank:
                low, high = bucket_edges(bucket)
                share = (rank - before + 0.5) / count
                if bucket == 0:
                    out.append(low + (high - low) * share)
                else:
                    out.append(low * (high / low) ** share)
                break
            before += count
    return out


def _bucket_sql(end: str, start: str) -> str:
    minutes = f'(EXTRACT(EPOCH FROM ("{end}" - "{start}"))::float8 / 60.0)'
    last = HISTOGRAM_BUCKETS - 1
    return (
        f"CASE WHEN {minutes} IS NULL THEN NULL WHEN {minutes} < 1 THEN 0 "
        f"WHEN {minutes} >= {HISTOGRAM_MAX_MINUTES} THEN {last} "
        f"ELSE LEAST({last - 1}, 1 + FLOOR(LN({minutes}) / LN({RATIO!r}))::int) END"
    )


def _insert_sql(where: str) -> tuple[str, list[Any]]:
    """INSERT … SELECT of the rollup rows of the study rows matching ``where`` (SQL of the studystat table)."""
    weights = {k.upper(): float(v) for k, v in settings.STATISTICS_MODALITY_WEIGHTS.items()}
    cases = " ".join("WHEN %s THEN %s" for m in weights if m != "*")
    params: list[Any] = [v for m, w in weights.items() if m != "*" for v in (m, w)]
    params.append(weights.get("*", 1.0))
    weight = f'CASE "modality" {cases} ELSE %s END' if cases else "%s"
    buckets = ", ".join(f"{_bucket_sql(end, start)} AS b_{stage}" for stage, (end, start) in STAGE_FIELDS.items())
    dims = ", ".join(f"('{d}')" for d in DIMS)
    histograms = ", ".join(
        f"COUNT(*) FILTER (WHERE b_{stage} = {b})" for stage in HISTOGRAM_STAGES for b in range(HISTOGRAM_BUCKETS)
    )
    columns = ", ".join(
        f'"{c}"'
        for c in (
            "period",
            "institution_id",
            "day",
            "pool_id",
            "dim",
            "modality",
            "priority",
            "body_part",
            "station",
            "reader_id",
            *COUNTS,
            *HISTOGRAMS,
        )
    )
    sql = (
        f"WITH s AS MATERIALIZED (SELECT *, {weight} AS w, {buckets} FROM {SOURCE} WHERE {where}) "  # noqa: S608 - names are ours
        f"INSERT INTO {TABLE} ({columns}) "
        "SELECT 'day', institution_id, day, pool_id, d.dim, "
        "CASE WHEN d.dim = 'modality' THEN modality ELSE '' END, "
        "CASE WHEN d.dim = 'priority' THEN priority ELSE '' END, "
        "CASE WHEN d.dim = 'body_part' THEN body_part ELSE '' END, "
        "CASE WHEN d.dim = 'station' THEN station ELSE '' END, "
        "CASE WHEN d.dim = 'reader' THEN reader_id END, "
        "COUNT(*), COUNT(signed_at), "
        "COUNT(*) FILTER (WHERE due_at IS NOT NULL), "
        "COUNT(*) FILTER (WHERE due_at IS NOT NULL AND signed_at IS NOT NULL AND NOT breached), "
        "COUNT(*) FILTER (WHERE due_at IS NOT NULL AND breached), "
        "COUNT(*) FILTER (WHERE due_at IS NOT NULL AND escalations > 0), "
        "COALESCE(SUM(escalations) FILTER (WHERE due_at IS NOT NULL), 0), "
        "COALESCE(SUM(w) FILTER (WHERE signed_at IS NOT NULL), 0), "
        f"{histograms} "
        f"FROM s CROSS JOIN (VALUES {dims}) AS d(dim) "
        "WHERE d.dim <> 'reader' OR s.reader_id IS NOT NULL "
        "GROUP BY 2, 3, 4, 5, 6, 7, 8, 9, 10"
    )
    return sql, params


def _month_sql(where: str) -> str:
    """INSERT … SELECT of month rows summing the day rows matching ``where`` (SQL of the rollup table)."""
    keys = ("institution_id", "pool_id", "dim", "modality", "priority", "body_part", "station", "reader_id")
    sums = (*COUNTS, *HISTOGRAMS)
    columns = ", ".join(f'"{c}"' for c in ("period", "day", *keys, *sums))
    grouped = ", ".join(f'"{k}"' for k in keys)
    return (
        f"INSERT INTO {TABLE} ({columns}) "  # noqa: S608 - names are ours
        f"SELECT 'month', date_trunc('month', \"day\")::date, {grouped}, "
        + ", ".join(f'SUM("{c}")' for c in sums)
        + f" FROM {TABLE} WHERE \"period\" = 'day' AND {where} GROUP BY date_trunc('month', \"day\"), {grouped}"
    )


def _month(day: date) -> tuple[date, date]:
    first = day.replace(day=1)
    following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first, following


def mark_stale(institution_id: Any, day: date) -> None:
    """Note that a day's rollups must be recomputed (cheap: the action's transaction only inserts a row)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {STALE} ("institution_id", "day") VALUES (%s, %s) ON CONFLICT DO NOTHING',  # noqa: S608
            [institution_id, day],
        )


def refresh_stale(institution_ids: list[Any] | None = None) -> int:
    """Recompute the stale days (of these institutions) and their months; returns how many days.

    Another refresher's days are skipped (``SKIP LOCKED``); a month is
    recomputed under a lock of its own, so two never interleave.
    """
    if connection.vendor != "postgresql":
        return 0
    with transaction.atomic():
        stale = StaleRollupDay.objects.select_for_update(skip_locked=True).order_by("institution_id", "day")
        if institution_ids is not None:
            stale = stale.filter(institution_id__in=institution_ids)
        rows = list(stale.values_list("pk", "institution_id", "day"))
        months = sorted({(institution_id, _month(day)[0]) for _, institution_id, day in rows})
        for _, institution_id, day in rows:
            refresh_day(institution_id, day, month=False)
        for institution_id, first in months:
            refresh_month(institution_id, first)
        StaleRollupDay.objects.filter(pk__in=[pk for pk, _, _ in rows]).delete()
    return len(rows)


def refresh_day(institution_id: Any, day: date, *, month: bool = True) -> None:
    """Recompute one institution's rollup rows of one day (and of its month) from its study rows."""
    if connection.vendor != "postgresql":
        return
    sql, params = _insert_sql('"institution_id" = %s AND "day" = %s')
    with connection.cursor() as cursor:
        cursor.execute(
            f'DELETE FROM {TABLE} WHERE "institution_id" = %s AND "period" = \'day\' AND "day" = %s',  # noqa: S608
            [institution_id, day],
        )
        cursor.execute(sql, params + [institution_id, day])
    if month:
        refresh_month(institution_id, day)


def refresh_month(institution_id: Any, day: date) -> None:
    """Recompute the month rows of ``day``'s month from its day rows, under a lock of that month."""
    first, following = _month(day)
    where = '"institution_id" = %s AND "day" >= %s AND "day" < %s'
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"statrollup:{institution_id}:{first}"])
        cursor.execute(
            f"DELETE FROM {TABLE} WHERE \"period\" = 'month' AND {where}",  # noqa: S608
            [institution_id, first, following],
        )
        cursor.execute(_month_sql(where), [institution_id, first, following])


def rebuild(institution_id: Any = None) -> int:
    """Recompute every rollup row (of one institution); returns how many rows there are."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        if institution_id is None:
            cursor.execute(f"DELETE FROM {STALE}")  # noqa: S608
            cursor.execute(f"DELETE FROM {TABLE}")  # noqa: S608
            sql, params = _insert_sql("TRUE")
            cursor.execute(sql, params)
            cursor.execute(_month_sql("TRUE"))
        else:
            cursor.execute(f'DELETE FROM {STALE} WHERE "institution_id" = %s', [institution_id])  # noqa: S608
            cursor.execute(f'DELETE FROM {TABLE} WHERE "institution_id" = %s', [institution_id])  # noqa: S608
            sql, params = _insert_sql('"institution_id" = %s')
            cursor.execute(sql, params + [institution_id])
            cursor.execute(_month_sql('"institution_id" = %s'), [institution_id])
        cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")  # noqa: S608
        return int(cursor.fetchone()[0])
