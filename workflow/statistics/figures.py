"""The figures: each chart is a function of a scope and filters returning rows of plain values.

Every figure reads :class:`~.models.StudyStat` (or the referrals and edge
samples) over the scope's date range through an index that starts with the
scope (institution, pool or day): the cost grows with the studies in the
range, never with the archive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Aggregate, Count, F, FloatField, Func, Max, Q, QuerySet, Sum, Value, When
from django.db.models import Case as CaseExpr
from django.db.models.functions import TruncDay, TruncHour

from pacs_cloud.models import Institution

from ..models import Priority, RadiologistPool
from ..referrals.models import Referral
from . import rollups
from .models import EdgeBacklogSample, StatRollup, StudyStat

PERCENTILES = (0.5, 0.9)


@dataclass(frozen=True)
class Scope:
    """Whose figures: one institution's studies, the studies one pool read, or every institution's."""

    kind: str  # "institution", "pool" or "platform"
    institution: Institution | None = None
    pool: RadiologistPool | None = None
    # Whether figures may name radiologists and pools: the institutions' own
    # business, not shown to the platform's operator.
    named: bool = True

    @property
    def time_zone(self) -> str:
        if self.institution is not None:
            return self.institution.time_zone
        if self.pool is not None:
            return self.pool.owner.time_zone
        return settings.STATISTICS_PLATFORM_TIME_ZONE

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def name(self) -> str:
        if self.institution is not None:
            return self.institution.name
        if self.pool is not None:
            return self.pool.name
        return "All institutions"

    def query(self) -> dict[str, str]:
        if self.institution is not None:
            return {"institution": str(self.institution.pk)}
        if self.pool is not None:
            return {"pool": str(self.pool.pk)}
        return {}


@dataclass(frozen=True)
class Filters:
    date_from: date
    date_to: date
    modality: str = ""
    priority: str = ""

    def query(self) -> dict[str, str]:
        out = {"from": self.date_from.isoformat(), "to": self.date_to.isoformat()}
        if self.modality:
            out["modality"] = self.modality
        if self.priority:
            out["priority"] = self.priority
        return out

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """The range as instants: local midnight of the first day to local midnight after the last."""
        return (
            datetime.combine(self.date_from, time(), zone),
            datetime.combine(self.date_to + timedelta(days=1), time(), zone),
        )


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    unit: str = ""


@dataclass(frozen=True)
class Chart:
    slug: str
    title: str
    columns: tuple[Column, ...]
    compute: Callable[..., list[dict[str, Any]]]  # (scope, filters, batch=None)
    draw: str  # "line", "bars" or "series" (one line per label)
    value: str  # the column drawn
    scopes: frozenset[str] = frozenset({"institution", "pool", "platform"})
    second: str = ""  # a second bar per label (p90 beside the median)
    note: str = ""
    names_staff: bool = False  # shows radiologists or pools by name

    @property
    def shown(self) -> list[Column]:
        """The columns a person reads: an opaque id column is for the API only."""
        return [c for c in self.columns if c is not KEY]


# Aggregates --------------------------------------------------------------------


class Percentiles(Aggregate):
    """PostgreSQL's ``percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY x)``: NULLs are left out."""

    function = "percentile_cont"
    template = "%(function)s(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY %(expressions)s)"
    allow_distinct = False

    def __init__(self, expression: Any, **extra: Any) -> None:
        from django.contrib.postgres.fields import ArrayField

        super().__init__(expression, output_field=ArrayField(FloatField()), **extra)


class Minutes(Func):
    """Minutes between two instants (NULL when either is missing)."""

    template = "EXTRACT(EPOCH FROM (%(expressions)s)) / 60.0"
    arg_joiner = " - "
    output_field = FloatField()


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _quantiles(values: list[float]) -> list[float | None]:
    if not values:
        return [None, None]
    if len(values) == 1:
        return [values[0], values[0]]
    ordered = sorted(values)
    # Linear interpolation, as PostgreSQL's percentile_cont.
    out: list[float | None] = []
    for p in PERCENTILES:
        pos = p * (len(ordered) - 1)
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# Scope and labels ----------------------------------------------------------------


def studies(scope: Scope, filters: Filters) -> QuerySet[StudyStat]:
    rows = StudyStat.objects.filter(day__gte=filters.date_from, day__lte=filters.date_to)
    if scope.institution is not None:
        rows = rows.filter(institution=scope.institution)
    elif scope.pool is not None:
        rows = rows.filter(pool=scope.pool)
    if filters.modality:
        rows = rows.filter(modality=filters.modality)
    if filters.priority:
        rows = rows.filter(priority=filters.priority)
    return rows


NONE_LABEL = "—"


def _labels(dimension: str, keys: list[Any]) -> dict[Any, str]:
    if dimension == "priority":
        return {k: Priority(k).label if k in Priority.values else str(k) for k in keys}
    if dimension == "reader_id":
        users = get_user_model().objects.filter(pk__in=[k for k in keys if k is not None])
        return {u.pk: str(u) for u in users}
    if dimension == "pool_id":
        names = dict(RadiologistPool.objects.filter(pk__in=[k for k in keys if k]).values_list("pk", "name"))
        return {**names, None: "Own radiologists"}
    if dimension == "institution_id":
        return dict(Institution.objects.filter(pk__in=[k for k in keys if k]).values_list("pk", "name"))
    return {k: str(k) for k in keys if k}


def _order(dimension: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if dimension == "priority":
        rank = {p: i for i, p in enumerate(Priority.values)}
        return sorted(rows, key=lambda r: rank.get(r["key"], 9))
    return sorted(rows, key=lambda r: (-r.get("studies", 0), r["label"]))


# Volumes -------------------------------------------------------------------------


def volume_by_day(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
    batch = batch or rollup_for(scope, filters)
    if batch is not None:
        counts = dict(batch.volumes("day"))
    else:
        counts = dict(studies(scope, filters).values_list("day").annotate(n=Count("pk")).values_list("day", "n"))
    days = (filters.date_to - filters.date_from).days + 1
    out = []
    for i in range(days):
        day = filters.date_from + timedelta(days=i)
        out.append({"key": day.isoformat(), "label": day.isoformat(), "studies": counts.get(day, 0)})
    return out


def _volume(dimension: str) -> Callable[..., list[dict[str, Any]]]:
    def compute(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
        batch = batch or rollup_for(scope, filters)
        if batch is not None:
            counts = batch.volumes(dimension)
        else:
            counts = list(studies(scope, filters).values_list(dimension).annotate(n=Count("pk")).order_by())
        labels = _labels(dimension, [k for k, _ in counts])
        rows = [{"key": str(k or ""), "label": labels.get(k, NONE_LABEL), "studies": n} for k, n in counts]
        return _order(dimension, rows)

    return compute


# Turnaround ----------------------------------------------------------------------

STAGES = (
    ("to_images", "registration → images", "images_at", "registered_at"),
    ("to_complete", "images → complete", "completed_at", "images_at"),
    ("to_claim", "complete → claimed", "claimed_at", "completed_at"),
    ("to_sign", "claimed → signed", "signed_at", "claimed_at"),
    ("total", "images → signed", "signed_at", "images_at"),
)


def _turnaround(dimension: str) -> Callable[..., list[dict[str, Any]]]:
    def compute(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
        batch = batch or rollup_for(scope, filters)
        rows_qs = studies(scope, filters)
        if dimension in {"reader_id", "pool_id"}:
            rows_qs = rows_qs.exclude(reader=None)  # who read: nobody yet for an unclaimed study
        grouped: list[dict[str, Any]]
        if batch is not None:
            grouped = batch.reads(dimension)
        elif _postgres():
            aggregates = {name: Percentiles(Minutes(F(end), F(start))) for name, _, end, start in STAGES}
            grouped = list(
                rows_qs.values(dimension).annotate(studies=Count("pk"), signed=Count("signed_at"), **aggregates)
            )
        else:
            fields = sorted({f for _, _, end, start in STAGES for f in (end, start)})
            buckets: dict[Any, list[dict[str, Any]]] = {}
            for row in rows_qs.values(dimension, *fields):
                buckets.setdefault(row[dimension], []).append(row)
            grouped = []
            for key, items in buckets.items():
                entry: dict[str, Any] = {dimension: key, "studies": len(items)}
                entry["signed"] = sum(1 for r in items if r["signed_at"])
                for name, _, end, start in STAGES:
                    values = [(r[end] - r[start]).total_seconds() / 60 for r in items if r[end] and r[start]]
                    entry[name] = _quantiles(values)
                grouped.append(entry)
        labels = _labels(dimension, [g[dimension] for g in grouped])
        out = []
        for g in grouped:
            row = {
                "key": str(g[dimension] or ""),
                "label": labels.get(g[dimension], NONE_LABEL),
                "studies": g["studies"],
                "signed": g["signed"],
            }
            for name, *_ in STAGES:
                median, p90 = g[name] or [None, None]
                row[f"{name}_median"] = _round(median)
                row[f"{name}_p90"] = _round(p90)
            out.append(row)
        return _order(dimension, out)

    return compute


TURNAROUND_COLUMNS = tuple(
    c
    for name, label, *_ in STAGES
    for c in (Column(f"{name}_median", f"{label}, median", "min"), Column(f"{name}_p90", f"{label}, 90th pct", "min"))
)


# SLA and workload ----------------------------------------------------------------


def sla_by_priority(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
    batch = batch or rollup_for(scope, filters)
    if batch is not None:
        grouped: Any = [g for g in batch.reads("priority") if g["offered"]]
    else:
        grouped = (
            studies(scope, filters)
            .exclude(due_at=None)
            .values("priority")
            .annotate(
                offered=Count("pk"),
                signed=Count("signed_at"),
                met=Count("pk", filter=Q(signed_at__isnull=False, breached=False)),
                breached=Count("pk", filter=Q(breached=True)),
                escalated=Count("pk", filter=Q(escalations__gt=0)),
                escalations=Sum("escalations"),
            )
        )
    labels = _labels("priority", [g["priority"] for g in grouped])
    out = []
    for g in grouped:
        judged = g["met"] + g["breached"]
        out.append(
            {
                "key": g["priority"],
                "label": labels.get(g["priority"], NONE_LABEL),
                "offered": g["offered"],
                "signed": g["signed"],
                "met": g["met"],
                "breached": g["breached"],
                "escalated": g["escalated"],
                "escalations": g["escalations"] or 0,
                "compliance": round(100.0 * g["met"] / judged, 1) if judged else None,
            }
        )
    return _order("priority", out)


def modality_weights() -> dict[str, float]:
    return {k.upper(): float(v) for k, v in settings.STATISTICS_MODALITY_WEIGHTS.items()}


def workload(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
    batch = batch or rollup_for(scope, filters)
    if batch is not None:
        read = [g for g in batch.reads("reader_id") if g["signed"]]
        labels = _labels("reader_id", [g["reader_id"] for g in read])
        rows = [
            {
                "key": str(g["reader_id"]),
                "label": labels.get(g["reader_id"], NONE_LABEL),
                "studies": g["signed"],
                "weighted": round(float(g["weighted"]), 2),
            }
            for g in read
        ]
        return sorted(rows, key=lambda r: (-r["weighted"], r["label"]))
    weights = modality_weights()
    default = weights.get("*", 1.0)
    weight = CaseExpr(
        *[When(modality=m, then=Value(w)) for m, w in weights.items() if m != "*"],
        default=Value(default),
        output_field=FloatField(),
    )
    grouped = list(
        studies(scope, filters)
        .filter(signed_at__isnull=False)
        .exclude(reader=None)
        .values("reader_id")
        .annotate(studies=Count("pk"), weighted=Sum(weight))
    )
    labels = _labels("reader_id", [g["reader_id"] for g in grouped])
    rows = [
        {
            "key": str(g["reader_id"]),
            "label": labels.get(g["reader_id"], NONE_LABEL),
            "studies": g["studies"],
            "weighted": round(g["weighted"] or 0.0, 2),
        }
        for g in grouped
    ]
    return sorted(rows, key=lambda r: (-r["weighted"], r["label"]))


# Referrals and the edge backlog --------------------------------------------------------


def referrals(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
    start, end = filters.bounds(scope.zone)
    sent = Referral.objects.filter(sent_at__gte=start, sent_at__lt=end)
    if scope.institution is not None:
        groups = [
            ("sent", "Sent", sent.filter(from_institution=scope.institution)),
            ("received", "Received", sent.filter(to_institution=scope.institution)),
        ]
    else:
        groups = [("all", "All referrals", sent)]
    out = []
    for key, label, rows in groups:
        counts = rows.aggregate(
            total=Count("pk"),
            declined=Count("pk", filter=Q(state=Referral.State.DECLINED)),
            answered=Count("responded_at"),
            pending=Count("pk", filter=Q(state=Referral.State.SENT)),
        )
        if _postgres():
            median, p90 = rows.aggregate(p=Percentiles(Minutes(F("responded_at"), F("sent_at"))))["p"] or [None, None]
        else:
            values = [
                (r - s).total_seconds() / 60
                for s, r in rows.exclude(responded_at=None).values_list("sent_at", "responded_at")
            ]
            median, p90 = _quantiles(values)
        out.append(
            {
                "key": key,
                "label": label,
                "referrals": counts["total"],
                "accepted": counts["answered"] - counts["declined"],
                "declined": counts["declined"],
                "pending": counts["pending"],
                "response_median": _round(median),
                "response_p90": _round(p90),
            }
        )
    return out


def edge_backlog(scope: Scope, filters: Filters, batch: Batch | None = None) -> list[dict[str, Any]]:
    start, end = filters.bounds(scope.zone)
    rows = EdgeBacklogSample.objects.filter(taken_at__gte=start, taken_at__lt=end)
    if scope.institution is not None:
        rows = rows.filter(institution=scope.institution)
    hourly = (filters.date_to - filters.date_from).days < 7
    bucket = (TruncHour if hourly else TruncDay)("taken_at", tzinfo=scope.zone)
    grouped = (
        rows.annotate(at=bucket)
        .values("at", "edge_id", "edge__name")
        .annotate(depth=Max("outbox_depth"), oldest=Max("oldest_unsent_seconds"))
        .order_by("at", "edge__name")
    )
    fmt = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    grouped = grouped.values("at", "edge_id", "edge__name", "edge__institution__name", "depth", "oldest")
    return [
        {
            "key": g["at"].astimezone(scope.zone).strftime(fmt),
            # An edge's name is its institution's business; the platform sees which institution's edge.
            "label": g["edge__name"] if scope.named else f"{g['edge__institution__name']} {str(g['edge_id'])[:8]}",
            "edge": str(g["edge_id"]),
            "outbox_depth": g["depth"],
            "oldest_minutes": _round(g["oldest"] / 60 if g["oldest"] is not None else None),
        }
        for g in grouped
    ]


# The catalogue -------------------------------------------------------------------------

MINE = frozenset({"institution", "pool"})
NOT_INSTITUTION = frozenset({"pool", "platform"})
KEY = Column("key", "Key")
LABEL = Column("label", "Name")
STUDIES = Column("studies", "Studies")


def _turnaround_chart(
    slug: str, dimension: str, title: str, first: str, scopes: frozenset[str], *, names: bool = False
) -> Chart:
    return Chart(
        slug,
        title,
        (KEY, Column("label", first), STUDIES, Column("signed", "Signed"), *TURNAROUND_COLUMNS),
        _turnaround(dimension),
        "bars",
        "total_median",
        scopes,
        second="total_p90",
        note="Minutes from the images to the signature: median and 90th percentile.",
        names_staff=names,
    )


CHARTS: dict[str, Chart] = {
    c.slug: c
    for c in [
        Chart(
            "volume-by-day",
            "Studies per day",
            (Column("key", "Day"), STUDIES),
            volume_by_day,
            "line",
            "studies",
        ),
        Chart(
            "volume-by-modality",
            "Studies by modality",
            (KEY, Column("label", "Modality"), STUDIES),
            _volume("modality"),
            "bars",
            "studies",
        ),
        Chart(
            "volume-by-body-part",
            "Studies by body part",
            (KEY, Column("label", "Body part"), STUDIES),
            _volume("body_part"),
            "bars",
            "studies",
        ),
        Chart(
            "volume-by-station",
            "Studies by station",
            (KEY, Column("label", "Station"), STUDIES),
            _volume("station"),
            "bars",
            "studies",
            MINE - {"pool"},
        ),
        Chart(
            "volume-by-institution",
            "Studies by institution",
            (KEY, Column("label", "Institution"), STUDIES),
            _volume("institution_id"),
            "bars",
            "studies",
            NOT_INSTITUTION,
        ),
        _turnaround_chart(
            "turnaround-by-priority",
            "priority",
            "Turnaround by priority",
            "Priority",
            frozenset({"institution", "pool", "platform"}),
        ),
        _turnaround_chart(
            "turnaround-by-modality",
            "modality",
            "Turnaround by modality",
            "Modality",
            frozenset({"institution", "pool", "platform"}),
        ),
        _turnaround_chart(
            "turnaround-by-reader", "reader_id", "Turnaround by radiologist", "Radiologist", MINE, names=True
        ),
        _turnaround_chart(
            "turnaround-by-pool", "pool_id", "Turnaround by pool", "Pool", frozenset({"institution"}), names=True
        ),
        _turnaround_chart(
            "turnaround-by-institution", "institution_id", "Turnaround by institution", "Institution", NOT_INSTITUTION
        ),
        Chart(
            "sla-by-priority",
            "SLA compliance by priority",
            (
                KEY,
                Column("label", "Priority"),
                Column("offered", "Offered"),
                Column("signed", "Signed"),
                Column("met", "Signed within SLA"),
                Column("breached", "Breached"),
                Column("escalated", "Escalated studies"),
                Column("escalations", "Escalations"),
                Column("compliance", "Compliance", "%"),
            ),
            sla_by_priority,
            "bars",
            "compliance",
            note="Signed within the first offer's SLA, of the studies signed or breached.",
        ),
        Chart(
            "workload",
            "Workload per radiologist",
            (
                KEY,
                Column("label", "Radiologist"),
                Column("studies", "Studies signed"),
                Column("weighted", "Weighted studies"),
            ),
            workload,
            "bars",
            "weighted",
            MINE,
            note="Signed studies weighted by modality (STATISTICS_MODALITY_WEIGHTS).",
            names_staff=True,
        ),
        Chart(
            "referrals",
            "Referrals",
            (
                KEY,
                Column("label", "Direction"),
                Column("referrals", "Referrals"),
                Column("accepted", "Accepted"),
                Column("declined", "Declined"),
                Column("pending", "Waiting for an answer"),
                Column("response_median", "Response time, median", "min"),
                Column("response_p90", "Response time, 90th pct", "min"),
            ),
            referrals,
            "bars",
            "referrals",
            frozenset({"institution", "platform"}),
        ),
        Chart(
            "edge-backlog",
            "Edge backlog",
            (
                Column("key", "Time"),
                Column("label", "Edge"),
                Column("outbox_depth", "Images waiting (max)"),
                Column("oldest_minutes", "Oldest wait (max)", "min"),
            ),
            edge_backlog,
            "series",
            "outbox_depth",
            frozenset({"institution", "platform"}),
            note="The largest outbox each edge reported per hour (per day over a week or more).",
        ),
    ]
}


def batch_for(scope: Scope, filters: Filters) -> Batch | None:
    """Shared grouped queries where the database has GROUPING SETS and percentiles (PostgreSQL).

    Over more than ``STATISTICS_ROLLUP_DAYS`` days without a modality or
    priority filter, the daily rollups (approximate percentiles).
    """
    if not _postgres():
        return None
    return rollup_for(scope, filters) or Batch(scope, filters)


def rollup_for(scope: Scope, filters: Filters) -> RollupBatch | None:
    """The rollups' figures when the range is long and its filters are ones the rollups carry."""
    if not _postgres() or filters.modality or filters.priority:
        return None
    if (filters.date_to - filters.date_from).days + 1 <= rollups.rollup_days():
        return None
    # Days changed since the beat's last sweep are brought up to date before they are read.
    rollups.refresh_stale([scope.institution.pk] if scope.institution is not None else None)
    return RollupBatch(scope, filters)


def charts_for(scope: Scope) -> list[Chart]:
    return [c for c in CHARTS.values() if scope.kind in c.scopes and (scope.named or not c.names_staff)]


# One scan for many charts (PostgreSQL) ------------------------------------------------------


VOLUME_SETS = ("day", "modality", "body_part", "station", "institution_id")
# The pool set keeps apart the studies nobody has read (no reader, so no pool either).
READ_SETS = ("priority", "modality", "reader_id", "pool_id", "institution_id")
_UNREAD = '("workflow_studystat"."reader_id" IS NULL)'


class Batch:
    """The figures of every StudyStat chart of one page from two grouped queries (GROUPING SETS).

    A page draws a dozen charts from the same rows; asked one by one they are
    a dozen scans and round trips. Each set's rows come back tagged by
    ``GROUPING()``, whose bit for a column is 0 in the set grouped by it.
    """

    approximate = False  # percentiles exact (percentile_cont)

    def __init__(self, scope: Scope, filters: Filters) -> None:
        self.scope, self.filters = scope, filters
        self._volumes: dict[str, list[tuple[Any, int]]] | None = None
        self._reads: dict[str, list[dict[str, Any]]] | None = None
        # Only the groupings the scope's charts show: each one is another sort.
        own = scope.kind == "institution"
        self.volume_sets = tuple(
            c for c in VOLUME_SETS if not (c == "institution_id" and own) and not (c == "station" and not own)
        )
        self.read_sets = tuple(
            c
            for c in READ_SETS
            if not (c == "institution_id" and own)
            and not (c == "reader_id" and not scope.named)
            and not (c == "pool_id" and not (own and scope.named))
        )

    def _where(self) -> tuple[str, list[Any]]:
        qs = studies(self.scope, self.filters)
        compiler = qs.query.get_compiler(using=qs.db)
        sql, params = compiler.compile(qs.query.where)
        return sql, list(params)

    @staticmethod
    def _set(mask: int, names: tuple[str, ...]) -> str:
        width = len(names)
        return next(n for i, n in enumerate(names) if not (mask >> (width - 1 - i)) & 1)

    def volumes(self, dimension: str) -> list[tuple[Any, int]]:
        if self._volumes is None:
            where, params = self._where()
            names = self.volume_sets
            cols = ", ".join(f'"{c}"' for c in names)
            sets = ", ".join(f'("{c}")' for c in names)
            sql = (
                f'SELECT GROUPING({cols}), {cols}, COUNT(*) FROM "workflow_studystat" '  # noqa: S608 - names are ours
                f"WHERE {where} GROUP BY GROUPING SETS ({sets})"
            )
            self._volumes = {c: [] for c in VOLUME_SETS}
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                for mask, *values, count in cursor.fetchall():
                    name = self._set(mask, names)
                    self._volumes[name].append((values[names.index(name)], count))
        return self._volumes[dimension]

    def reads(self, dimension: str) -> list[dict[str, Any]]:
        if self._reads is None:
            self._reads = self._query_reads()
        return self._reads[dimension]

    def _query_reads(self) -> dict[str, list[dict[str, Any]]]:
        where, params = self._where()
        weights = modality_weights()
        weight_sql = "CASE " + " ".join('WHEN "modality" = %s THEN %s' for m in weights if m != "*")
        weight_params: list[Any] = [v for m, w in weights.items() if m != "*" for v in (m, w)]
        weight_sql += " ELSE %s END"
        weight_params.append(weights.get("*", 1.0))
        stages = ", ".join(
            f'percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM ("{end}" - "{start}")) / 60.0)'
            for _, _, end, start in STAGES
        )
        names = self.read_sets
        # The unread flag is a grouping column only where a reader or pool set uses it.
        unread = _UNREAD if {"reader_id", "pool_id"} & set(names) else "FALSE"
        grouping = ", ".join(f'"{c}"' for c in names) + f", {unread}"
        sets = ", ".join(f'("{c}", {_UNREAD})' if c in {"pool_id", "reader_id"} else f'("{c}")' for c in names)
        sql = (
            f"SELECT GROUPING({', '.join(chr(34) + c + chr(34) for c in names)}), {grouping}, "  # noqa: S608
            f'COUNT(*), COUNT("signed_at"), {stages}, '
            'COUNT(*) FILTER (WHERE "due_at" IS NOT NULL), '
            'COUNT(*) FILTER (WHERE "due_at" IS NOT NULL AND "signed_at" IS NOT NULL AND NOT "breached"), '
            'COUNT(*) FILTER (WHERE "due_at" IS NOT NULL AND "breached"), '
            'COUNT(*) FILTER (WHERE "due_at" IS NOT NULL AND "escalations" > 0), '
            'SUM("escalations") FILTER (WHERE "due_at" IS NOT NULL), '
            f'SUM({weight_sql}) FILTER (WHERE "signed_at" IS NOT NULL) '
            f'FROM "workflow_studystat" WHERE {where} GROUP BY GROUPING SETS ({sets})'
        )
        out: dict[str, list[dict[str, Any]]] = {c: [] for c in READ_SETS}
        with connection.cursor() as cursor:
            cursor.execute(sql, weight_params + params)
            for row in cursor.fetchall():
                mask, keys, unread, rest = row[0], row[1 : 1 + len(names)], row[1 + len(names)], row[2 + len(names) :]
                name = self._set(mask, names)
                if name in {"reader_id", "pool_id"} and unread:
                    continue  # nobody read these yet
                n_stages = len(STAGES)
                studies_n, signed_n = rest[0], rest[1]
                entry: dict[str, Any] = {name: keys[names.index(name)], "studies": studies_n, "signed": signed_n}
                for (stage, *_), value in zip(STAGES, rest[2 : 2 + n_stages], strict=True):
                    entry[stage] = value
                offered, met, breached, escalated, escalations, weighted = rest[2 + n_stages :]
                entry.update(
                    offered=offered,
                    met=met,
                    breached=breached,
                    escalated=escalated,
                    escalations=escalations or 0,
                    weighted=weighted or 0.0,
                )
                out[name].append(entry)
        return out


# Long ranges from the daily rollups ---------------------------------------------------------

# A rollup row's grouping and the column holding its key, by the figures' dimension names.
_ROLLUP_DIMS = {
    "modality": ("modality", "modality"),
    "priority": ("priority", "priority"),
    "body_part": ("body_part", "body_part"),
    "station": ("station", "station"),
    "reader_id": ("reader", "reader_id"),
}
_SUMS = (*rollups.COUNTS, *rollups.HISTOGRAMS)


class RollupBatch(Batch):
    """The same figures summed from :class:`~.models.StatRollup` rows: a few rows per day, not one per study.

    Medians and 90th percentiles come from the summed histograms
    (:func:`.rollups.quantiles`): approximate, within one bucket.
    """

    approximate = True

    def __init__(self, scope: Scope, filters: Filters) -> None:
        super().__init__(scope, filters)
        self._groups: dict[str, dict[Any, list[Any]]] | None = None
        self._by_institution: list[dict[str, Any]] | None = None

    def _rollup_where(self, *, days_only: bool = False) -> tuple[str, list[Any]]:
        start, end = self.filters.date_from, self.filters.date_to
        # Whole months from the month rows, the days before and after them from the day rows.
        first = start if start.day == 1 else (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        after = (end + timedelta(days=1)).replace(day=1)  # the first day after the last whole month
        if first < after and not days_only:
            qs = StatRollup.objects.filter(
                Q(period="month", day__gte=first, day__lt=after)
                | Q(period="day", day__gte=start, day__lt=first)
                | Q(period="day", day__gte=after, day__lte=end)
            )
        else:
            qs = StatRollup.objects.filter(period="day", day__gte=start, day__lte=end)
        if self.scope.institution is not None:
            qs = qs.filter(institution=self.scope.institution)
        elif self.scope.pool is not None:
            qs = qs.filter(pool=self.scope.pool)
        compiler = qs.query.get_compiler(using=qs.db)
        sql, params = compiler.compile(qs.query.where)
        return sql, list(params)

    def _sums(
        self, dims: tuple[str, ...], keys: tuple[str, ...], sums: tuple[str, ...] = _SUMS
    ) -> list[tuple[Any, ...]]:
        where, params = self._rollup_where()
        columns = ", ".join(f'"{k}"' for k in keys)
        totals = ", ".join(f'SUM("{c}")' for c in sums)
        placeholders = ", ".join("%s" for _ in dims)
        sql = (
            f"SELECT {columns}, {totals} FROM {rollups.TABLE} "  # noqa: S608 - names are ours
            f'WHERE {where} AND "dim" IN ({placeholders}) GROUP BY {columns}'
        )
        with transaction.atomic(), connection.cursor() as cursor:
            # Wide rows: sorting them for the groups must not spill to disk.
            cursor.execute("SET LOCAL work_mem = '64MB'")
            cursor.execute(sql, params + list(dims))
            return cursor.fetchall()

    @staticmethod
    def _entry(name: str, key: Any, sums: list[Any]) -> dict[str, Any]:
        counts = dict(zip(rollups.COUNTS, sums[: len(rollups.COUNTS)], strict=True))
        entry: dict[str, Any] = {name: key, **counts}
        histograms = sums[len(rollups.COUNTS) :]
        width = rollups.HISTOGRAM_BUCKETS
        for i, (stage, *_) in enumerate(STAGES):
            entry[stage] = rollups.quantiles([int(n) for n in histograms[i * width : (i + 1) * width]])
        entry["weighted"] = float(entry["weighted"] or 0.0)
        return entry

    def _grouped(self) -> dict[str, dict[Any, list[Any]]]:
        """Sums per dimension and key (a pool's sums are its readers' rows)."""
        if self._groups is None:
            groups: dict[str, dict[Any, list[Any]]] = {name: {} for name in (*_ROLLUP_DIMS, "pool_id")}
            by_dim = {dim: (name, column) for name, (dim, column) in _ROLLUP_DIMS.items()}
            # Body part and station are only counted: their histograms stay unread.
            for name in ("body_part", "station"):
                if name in self.volume_sets:
                    for key, studies_n in self._sums((name,), (name,), ("studies",)):
                        groups[name][key] = [studies_n]
            skip = {"body_part", "station"}
            if not {"reader_id", "pool_id"} & set(self.read_sets):
                skip.add("reader")  # no chart of this scope names readers or pools
            by_dim = {dim: spec for dim, spec in by_dim.items() if dim not in skip}
            keys = ("dim", "modality", "priority", "reader_id", "pool_id")
            for row in self._sums(tuple(by_dim), keys):
                dim, values, pool, sums = row[0], row[1 : -1 - len(_SUMS)], row[-1 - len(_SUMS)], row[-len(_SUMS) :]
                name, column = by_dim[dim]
                key = values[("modality", "priority", "reader_id").index(column)]
                targets = [(name, key)] + ([("pool_id", pool)] if dim == "reader" else [])
                for target, k in targets:
                    acc = groups[target].setdefault(k, [0] * len(_SUMS))
                    for i, v in enumerate(sums):
                        acc[i] += v or 0
            self._groups = groups
        return self._groups

    def volumes(self, dimension: str) -> list[tuple[Any, int]]:
        if dimension == "day":
            # Per day: the day rows of the whole range (the month rows know no days).
            where, params = self._rollup_where(days_only=True)
            sql = f'SELECT "day", SUM("studies") FROM {rollups.TABLE} WHERE {where} AND "dim" = %s GROUP BY "day"'  # noqa: S608
            with connection.cursor() as cursor:
                cursor.execute(sql, [*params, "all"])
                return [(day, int(n)) for day, n in cursor.fetchall()]
        if dimension == "institution_id":
            return [(e["institution_id"], e["studies"]) for e in self._institutions()]
        return [(key, int(sums[0])) for key, sums in self._grouped()[dimension].items()]

    def _institutions(self) -> list[dict[str, Any]]:
        if self._by_institution is None:
            rows = self._sums(("all",), ("institution_id",))
            self._by_institution = [self._entry("institution_id", key, list(sums)) for key, *sums in rows]
        return self._by_institution

    def reads(self, dimension: str) -> list[dict[str, Any]]:
        if dimension == "institution_id":
            return self._institutions()
        return [self._entry(dimension, key, sums) for key, sums in self._grouped()[dimension].items()]
