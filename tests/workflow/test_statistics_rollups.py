"""Daily rollups: kept by the same actions as the per-study rows, and answering long ranges.

The scenario of ``test_statistics`` (claims, an escalation to a pool, signatures) plus an
order's priority changed afterwards; then the rollups must equal a fresh rebuild, the
figures summed from them must agree with the exact ones within a histogram bucket, and
the page over a long range must not read the per-study rows at all.
"""

from __future__ import annotations

import math
import random

from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext

from tests.conftest import api_client, web_client
from tests.workflow.test_statistics import scenario  # noqa: F401 - the shared scenario fixture
from workflow.models import StaleRollupDay, StatRollup, StudyStat
from workflow.statistics import rollups
from workflow.statistics.tasks import refresh_stale_rollups
from worklist.actions import do_edit_order
from worklist.models import Order

STAGE_NAMES = ("to_images", "to_complete", "to_claim", "to_sign", "total")
# 52 days: the whole of November from its month rows, the days around it from day rows.
LONG = {"from": "2026-10-20", "to": "2026-12-10"}


def snapshot() -> set[tuple]:
    names = [f.attname for f in StatRollup._meta.concrete_fields if f.name != "id"]
    return {
        tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in StatRollup.objects.values_list(*names)
    }


def rows(user, chart: str) -> dict[str, dict]:
    response = api_client(user).get(f"/api/v1/statistics/{chart}/", LONG)
    assert response.status_code == 200, response.content
    return response.json()


def within_a_bucket(approximate: float | None, values: list[float], p: float) -> bool:
    """Between the lower edge of the order statistic below the rank and the upper edge of the one above."""
    ordered = sorted(values)
    rank = p * (len(ordered) - 1)
    low = rollups.bucket_edges(rollups.bucket_of(ordered[math.floor(rank)]))[0]
    high = rollups.bucket_edges(rollups.bucket_of(ordered[math.ceil(rank)]))[1]
    return approximate is not None and low - 0.05 <= approximate <= high + 0.05


def test_rollups_follow_the_actions_and_answer_long_ranges(scenario, settings):  # noqa: F811
    admin = scenario.a.institution_admin
    # One more change after the signatures: the images-only CT of the 3rd becomes urgent.
    late = StudyStat.objects.get(institution=scenario.a.institution, signed_at=None, day="2026-11-03")
    with TestCase.captureOnCommitCallbacks(execute=True):
        do_edit_order(Order.objects.get(study_id=late.pk), changes={"priority": "urgent"})
    # The action only marked its day stale; the sweep (or a long-range read) brings the rollups up to date.
    assert StaleRollupDay.objects.filter(institution_id=scenario.a.institution.pk, day="2026-11-03").exists()
    assert not StatRollup.objects.filter(dim="priority", priority="urgent", day="2026-11-03").exists()
    assert refresh_stale_rollups() >= 1
    assert not StaleRollupDay.objects.exists()
    assert StatRollup.objects.filter(dim="priority", priority="urgent", day="2026-11-03").get().studies == 1

    # Kept by the actions and the sweep, equal to a fresh rebuild.
    kept = snapshot()
    assert kept
    rollups.rebuild()
    assert snapshot() == kept

    # A long-range read brings its institution's stale days up to date first.
    with TestCase.captureOnCommitCallbacks(execute=True):
        do_edit_order(Order.objects.get(study_id=late.pk), changes={"priority": "routine"})
    assert StaleRollupDay.objects.filter(institution_id=scenario.a.institution.pk).exists()
    rows(admin, "turnaround-by-priority")
    assert not StaleRollupDay.objects.filter(institution_id=scenario.a.institution.pk).exists()
    assert not StatRollup.objects.filter(dim="priority", priority="urgent", day="2026-11-03").exists()
    with TestCase.captureOnCommitCallbacks(execute=True):
        do_edit_order(Order.objects.get(study_id=late.pk), changes={"priority": "urgent"})
    refresh_stale_rollups()

    november = StatRollup.objects.filter(institution=scenario.a.institution, period="month", day="2026-11-01")
    assert november.filter(dim="all").count() == 2  # read by its own radiologists, and by the pool
    # The same range, exact (the setting above it) and from the rollups.
    settings.STATISTICS_ROLLUP_DAYS = 1000
    exact = {chart: rows(admin, chart) for chart in ("turnaround-by-priority", "turnaround-by-reader")}
    assert not exact["turnaround-by-priority"]["approximate"]
    settings.STATISTICS_ROLLUP_DAYS = 31
    for chart, body in exact.items():
        summed = rows(admin, chart)
        assert summed["approximate"]
        for e, s in zip(body["rows"], summed["rows"], strict=True):
            assert (e["key"], e["studies"], e["signed"]) == (s["key"], s["studies"], s["signed"])
            for stage in STAGE_NAMES:
                for p, column in ((0.5, f"{stage}_median"), (0.9, f"{stage}_p90")):
                    if e[column] is None:
                        assert s[column] is None
                        continue
                    values = stage_minutes(scenario.a.institution, chart, e["key"], stage)
                    assert within_a_bucket(s[column], values, p), (chart, e["key"], column, e[column], s[column])
    settings.STATISTICS_ROLLUP_DAYS = 1000
    exact_pools = [(r["key"], r["studies"], r["signed"]) for r in rows(admin, "turnaround-by-pool")["rows"]]
    settings.STATISTICS_ROLLUP_DAYS = 31
    assert [(r["key"], r["studies"], r["signed"]) for r in rows(admin, "turnaround-by-pool")["rows"]] == exact_pools
    for chart in ("volume-by-modality", "volume-by-station", "sla-by-priority", "workload"):
        settings.STATISTICS_ROLLUP_DAYS = 1000
        exact_rows = rows(admin, chart)["rows"]
        settings.STATISTICS_ROLLUP_DAYS = 31
        assert rows(admin, chart)["rows"] == exact_rows, chart
    per_day = {r["key"]: r["studies"] for r in rows(admin, "volume-by-day")["rows"]}
    assert (per_day["2026-11-02"], per_day["2026-11-03"], sum(per_day.values())) == (3, 1, 4)

    # The page over the long range reads the rollups, never a study's row, and says it is approximate.
    with CaptureQueriesContext(connection) as queries:
        page = web_client(admin).get("/statistics/", LONG)
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="approximate"' in text and "<td>王医生</td><td>2</td><td>2.5</td>" in text
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert "workflow_statrollup" in sql and "workflow_studystat" not in sql
    # A modality filter is not carried by the rollups: exact figures.
    filtered = web_client(admin).get("/statistics/", {**LONG, "modality": "CT"}).content.decode()
    assert 'id="approximate"' not in filtered


def stage_minutes(institution, chart: str, key: str, stage: str) -> list[float]:
    ends = dict(zip(STAGE_NAMES, rollups.STAGE_FIELDS.values(), strict=True))
    end, start = ends[stage]
    qs = StudyStat.objects.filter(institution=institution)
    qs = qs.exclude(**{f"{end}": None})
    qs = qs.exclude(**{f"{start}": None})
    if chart == "turnaround-by-priority":
        qs = qs.filter(priority=key)
    else:
        qs = qs.filter(reader_id=int(key))
    return [(getattr(r, end) - getattr(r, start)).total_seconds() / 60 for r in qs]


def test_percentiles_from_a_histogram_are_within_a_bucket():
    rng = random.Random(19)
    values = [rng.lognormvariate(4, 1.5) for _ in range(3000)]
    histogram = [0] * rollups.HISTOGRAM_BUCKETS
    for v in values:
        histogram[rollups.bucket_of(v)] += 1
    for p, approximate in zip((0.5, 0.9), rollups.quantiles(histogram), strict=True):
        assert within_a_bucket(approximate, values, p)
        ordered = sorted(values)
        exact = ordered[round(p * (len(ordered) - 1))]
        assert abs(approximate - exact) <= exact * (rollups.RATIO - 1)
    assert rollups.quantiles([0] * rollups.HISTOGRAM_BUCKETS) == [None, None]
    assert [rollups.bucket_of(m) for m in (-5, 0.5, 1, 86400, 10**7)] == [0, 0, 1, 63, 63]
