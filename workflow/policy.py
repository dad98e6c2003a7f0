"""Routing policies: the definition format, its validation, rule matching and the dry run.

A definition is JSON, saved as an immutable ``RoutingPolicy`` version::

    {
      "default_sla_minutes": {"stat": 60, "urgent": 240, "routine": 1440},
      "rules": [
        {
          "name": "Heads at night to the neuro pool",
          "when": {"modalities": ["CT", "MR"], "body_parts": ["HEAD"], "procedure_codes": [],
                   "priorities": ["stat"], "hours": {"from": "20:00", "to": "08:00"},
                   "weekdays": ["sat", "sun"], "min_age": 0, "max_age": 17},
          "offer_to": [{"kind": "own"}, {"kind": "pool", "pool": "<uuid>", "subspecialty": "neuro"},
                       {"kind": "person", "user": "rad@riverside"}],
          "sla_minutes": {"stat": 30},
          "escalation": [{"offer_to": [{"kind": "pool", "pool": "<uuid>"}], "sla_minutes": {"stat": 30}}],
          "double_reading": false
        }
      ],
      "fallback": {"offer_to": [{"kind": "own"}], "escalation": []}
    }

Rules are tried in order; the first whose every condition holds decides. An
absent condition always holds. Hours and weekdays are read in the hospital's
time zone; "hours" may wrap midnight. A study no rule matches follows
``fallback`` (by default the hospital's own radiologists).

The SLA of a step for a priority is, in order: the step's own
``sla_minutes``, the tightest agreement of the pools it offers to, the
policy's ``default_sla_minutes``, ``settings.WORKFLOW_DEFAULT_SLA_MINUTES``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.utils import timezone

from pacs_cloud.models import Institution, Membership, Role, User

from .models import PoolMember, Priority, RadiologistPool, ReadingAgreement

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
PRIORITIES = [p.value for p in Priority]
TARGET_KINDS = ("own", "pool", "person")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_RULES = 200
MAX_ESCALATION = 10


class PolicyError(ValueError):
    """A definition that cannot be saved; ``errors`` lists ``(path, message)``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in errors))
        self.errors = errors

    def as_dict(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for path, message in self.errors:
            out.setdefault(path or "definition", []).append(message)
        return out


# The facts a rule is matched on --------------------------------------------


@dataclass
class StudyFacts:
    """What routing knows about a study: the order's facts, else the images' attributes."""

    modality: str = ""
    modalities: list[str] = field(default_factory=list)
    body_part: str = ""
    procedure_code: str = ""
    procedure: str = ""
    priority: str = Priority.ROUTINE
    clinical_question: str = ""
    patient_age: int | None = None
    order_id: str = ""
    source: str = "images"  # "order" when an order supplied the facts

    def as_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "modalities": self.modalities,
            "body_part": self.body_part,
            "procedure_code": self.procedure_code,
            "procedure": self.procedure,
            "priority": self.priority,
            "clinical_question": self.clinical_question,
            "patient_age": self.patient_age,
            "order_id": self.order_id,
            "source": self.source,
        }


# Parsed definition ------------------------------------------------------------


@dataclass
class Target:
    kind: str
    pool: str = ""  # pool UUID
    subspecialty: str = ""
    user: str = ""  # username

    def as_dict(self) -> dict[str, str]:
        out = {"kind": self.kind}
        if self.kind == "pool":
            out["pool"] = self.pool
            if self.subspecialty:
                out["subspecialty"] = self.subspecialty
        if self.kind == "person":
            out["user"] = self.user
        return out


@dataclass
class Step:
    offer_to: list[Target]
    sla_minutes: dict[str, int]


@dataclass
class Condition:
    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    procedure_codes: list[str] = field(default_factory=list)
    priorities: list[str] = field(default_factory=list)
    hours: tuple[time, time] | None = None
    weekdays: list[str] = field(default_factory=list)
    min_age: int | None = None
    max_age: int | None = None

    def failures(self, facts: StudyFacts, local: datetime) -> list[str]:
        """Why the condition does not hold (empty when it holds)."""
        out = []
        if self.modalities:
            have = {m.upper() for m in (facts.modalities or [facts.modality]) if m}
            if not have & set(self.modalities):
                out.append(f"modality {'/'.join(sorted(have)) or '(none)'} not in {', '.join(self.modalities)}")
        if self.body_parts and facts.body_part.upper() not in self.body_parts:
            out.append(f"body part {facts.body_part or '(none)'} not in {', '.join(self.body_parts)}")
        if self.procedure_codes and facts.procedure_code.upper() not in self.procedure_codes:
            out.append(f"procedure code {facts.procedure_code or '(none)'} not in {', '.join(self.procedure_codes)}")
        if self.priorities and facts.priority not in self.priorities:
            out.append(f"priority {facts.priority} not in {', '.join(self.priorities)}")
        if self.hours is not None:
            start, end = self.hours
            now = local.time().replace(tzinfo=None)
            inside = start <= now < end if start < end else (now >= start or now < end)
            if not inside:
                out.append(f"local time {now:%H:%M} outside {start:%H:%M}–{end:%H:%M}")
        if self.weekdays and WEEKDAYS[local.weekday()] not in self.weekdays:
            out.append(f"weekday {WEEKDAYS[local.weekday()]} not in {', '.join(self.weekdays)}")
        if self.min_age is not None or self.max_age is not None:
            age = facts.patient_age
            if age is None:
                out.append("patient age unknown")
            elif self.min_age is not None and age < self.min_age:
                out.append(f"patient age {age} under {self.min_age}")
            elif self.max_age is not None and age > self.max_age:
                out.append(f"patient age {age} over {self.max_age}")
        return out

    def describe(self) -> list[str]:
        parts = []
        if self.modalities:
            parts.append("modality " + "/".join(self.modalities))
        if self.body_parts:
            parts.append("body part " + "/".join(self.body_parts))
        if self.procedure_codes:
            parts.append("procedure " + "/".join(self.procedure_codes))
        if self.priorities:
            parts.append("priority " + "/".join(self.priorities))
        if self.hours:
            parts.append(f"{self.hours[0]:%H:%M}–{self.hours[1]:%H:%M}")
        if self.weekdays:
            parts.append("/".join(self.weekdays))
        if self.min_age is not None or self.max_age is not None:
            lo = self.min_age if self.min_age is not None else 0
            parts.append(f"age {lo}–{self.max_age if self.max_age is not None else '…'}")
        return parts or ["any study"]


@dataclass
class Rule:
    name: str
    when: Condition
    steps: list[Step]  # [0] is the first offer, the rest the escalation chain
    double_reading: bool = False


@dataclass
class Policy:
    rules: list[Rule]
    fallback: Rule
    default_sla: dict[str, int]

    def match(self, facts: StudyFacts, local: datetime) -> tuple[int | None, Rule, list[dict[str, Any]]]:
        """The first matching rule (index None for the fallback) and every rule's evaluation."""
        evaluations = []
        chosen: tuple[int | None, Rule] | None = None
        for index, rule in enumerate(self.rules):
            failed = rule.when.failures(facts, local)
            evaluations.append({"index": index, "name": rule.name, "matched": not failed, "failed": failed})
            if not failed and chosen is None:
                chosen = (index, rule)
        if chosen is None:
            return None, self.fallback, evaluations
        return chosen[0], chosen[1], evaluations


# Parsing and validation -----------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append((path, message))


def _str_list(
    value: Any, path: str, errs: _Collector, *, upper: bool = True, allowed: list[str] | None = None
) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        errs.add(path, "expected a list of non-empty strings")
        return []
    items = [v.strip().upper() if upper else v.strip().lower() for v in value]
    if allowed is not None:
        for item in items:
            if item not in allowed:
                errs.add(path, f"{item!r} is not one of {', '.join(allowed)}")
    return items


def _sla(value: Any, path: str, errs: _Collector) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errs.add(path, 'expected minutes per priority, e.g. {"stat": 60}')
        return {}
    out = {}
    for key, minutes in value.items():
        if key not in PRIORITIES:
            errs.add(f"{path}.{key}", f"unknown priority; use {', '.join(PRIORITIES)}")
        elif isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 60 * 24 * 90:
            errs.add(f"{path}.{key}", "expected whole minutes between 1 and 129600")
        else:
            out[key] = minutes
    return out


def _age(value: Any, path: str, errs: _Collector) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 150:
        errs.add(path, "expected whole years between 0 and 150")
        return None
    return value


def _condition(value: Any, path: str, errs: _Collector) -> Condition:
    if value is None:
        return Condition()
    if not isinstance(value, dict):
        errs.add(path, "expected an object of conditions")
        return Condition()
    known = {"modalities", "body_parts", "procedure_codes", "priorities", "hours", "weekdays", "min_age", "max_age"}
    for key in value:
        if key not in known:
            errs.add(f"{path}.{key}", f"unknown condition; use {', '.join(sorted(known))}")
    cond = Condition(
        modalities=_str_list(value.get("modalities"), f"{path}.modalities", errs),
        body_parts=_str_list(value.get("body_parts"), f"{path}.body_parts", errs),
        procedure_codes=_str_list(value.get("procedure_codes"), f"{path}.procedure_codes", errs),
        priorities=_str_list(value.get("priorities"), f"{path}.priorities", errs, upper=False, allowed=PRIORITIES),
        weekdays=_str_list(value.get("weekdays"), f"{path}.weekdays", errs, upper=False, allowed=WEEKDAYS),
        min_age=_age(value.get("min_age"), f"{path}.min_age", errs),
        max_age=_age(value.get("max_age"), f"{path}.max_age", errs),
    )
    if cond.min_age is not None and cond.max_age is not None and cond.min_age > cond.max_age:
        errs.add(f"{path}.min_age", "is above max_age")
    hours = value.get("hours")
    if hours is not None:
        if not isinstance(hours, dict) or set(hours) != {"from", "to"}:
            errs.add(f"{path}.hours", 'expected {"from": "HH:MM", "to": "HH:MM"}')
        else:
            bounds = []
            for key in ("from", "to"):
                match = _HHMM.match(str(hours[key]))
                if not match:
                    errs.add(f"{path}.hours.{key}", "expected HH:MM (24-hour clock)")
                else:
                    bounds.append(time(int(match.group(1)), int(match.group(2))))
            if len(bounds) == 2:
                if bounds[0] == bounds[1]:
                    errs.add(f"{path}.hours", "from and to are equal; leave hours out to match all day")
                cond.hours = (bounds[0], bounds[1])
    return cond


def _targets(value: Any, path: str, errs: _Collector) -> list[Target]:
    if not isinstance(value, list) or not value:
        errs.add(path, "expected a non-empty list of targets")
        return []
    out = []
    for i, item in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(item, dict) or item.get("kind") not in TARGET_KINDS:
            errs.add(here, f"expected a target with kind one of {', '.join(TARGET_KINDS)}")
            continue
        kind = item["kind"]
        if kind == "pool":
            try:
                pool = str(uuid.UUID(str(item.get("pool", ""))))
            except ValueError:
                errs.add(f"{here}.pool", "expected the id of a radiologist pool")
                continue
            sub = item.get("subspecialty", "")
            if not isinstance(sub, str):
                errs.add(f"{here}.subspecialty", "expected a string")
                sub = ""
            out.append(Target("pool", pool=pool, subspecialty=sub.strip().lower()))
        elif kind == "person":
            user = item.get("user")
            if not isinstance(user, str) or not user.strip():
                errs.add(f"{here}.user", "expected a username")
                continue
            out.append(Target("person", user=user.strip()))
        else:
            out.append(Target("own"))
    keys = [tuple(sorted(t.as_dict().items())) for t in out]
    if len(set(keys)) != len(keys):
        errs.add(path, "lists the same target twice")
    return out


def _rule(value: Any, path: str, errs: _Collector, *, fallback: bool = False) -> Rule:
    if not isinstance(value, dict):
        errs.add(path, "expected an object")
        return Rule(name="", when=Condition(), steps=[])
    allowed = {"offer_to", "sla_minutes", "escalation", "double_reading"} | (set() if fallback else {"name", "when"})
    for key in value:
        if key not in allowed:
            errs.add(f"{path}.{key}", "unknown field")
    name = "Fallback" if fallback else value.get("name")
    if not isinstance(name, str) or not name.strip():
        errs.add(f"{path}.name", "every rule needs a name")
        name = ""
    steps = [
        Step(
            _targets(value.get("offer_to"), f"{path}.offer_to", errs),
            _sla(value.get("sla_minutes"), f"{path}.sla_minutes", errs),
        )
    ]
    chain = value.get("escalation") or []
    if not isinstance(chain, list) or len(chain) > MAX_ESCALATION:
        errs.add(f"{path}.escalation", f"expected a list of at most {MAX_ESCALATION} steps")
        chain = []
    for i, step in enumerate(chain):
        here = f"{path}.escalation[{i}]"
        if not isinstance(step, dict):
            errs.add(here, 'expected {"offer_to": [...], "sla_minutes": {...}}')
            continue
        for key in step:
            if key not in {"offer_to", "sla_minutes"}:
                errs.add(f"{here}.{key}", "unknown field")
        steps.append(
            Step(
                _targets(step.get("offer_to"), f"{here}.offer_to", errs),
                _sla(step.get("sla_minutes"), f"{here}.sla_minutes", errs),
            )
        )
    double = value.get("double_reading", False)
    if not isinstance(double, bool):
        errs.add(f"{path}.double_reading", "expected true or false")
        double = False
    return Rule(
        name=name.strip(), when=_condition(value.get("when"), f"{path}.when", errs), steps=steps, double_reading=double
    )


DEFAULT_FALLBACK = {"offer_to": [{"kind": "own"}]}


def parse(definition: Any) -> Policy:
    """Parse a definition without touching the database; raises :class:`PolicyError`."""
    errs = _Collector()
    if not isinstance(definition, dict):
        raise PolicyError([("", "a policy definition is a JSON object")])
    for key in definition:
        if key not in {"rules", "fallback", "default_sla_minutes"}:
            errs.add(key, "unknown field; use rules, fallback, default_sla_minutes")
    raw_rules = definition.get("rules", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        errs.add("rules", f"expected a list of at most {MAX_RULES} rules")
        raw_rules = []
    rules = [_rule(r, f"rules[{i}]", errs) for i, r in enumerate(raw_rules)]
    names = [r.name for r in rules if r.name]
    for name in {n for n in names if names.count(n) > 1}:
        errs.add("rules", f"two rules are named {name!r}")
    fallback = _rule(definition.get("fallback") or DEFAULT_FALLBACK, "fallback", errs, fallback=True)
    default_sla = _sla(definition.get("default_sla_minutes"), "default_sla_minutes", errs)
    if errs.errors:
        raise PolicyError(errs.errors)
    return Policy(rules=rules, fallback=fallback, default_sla=default_sla)


def validate(definition: Any, institution: Institution) -> Policy:
    """Parse and check every reference against the database; raises :class:`PolicyError`.

    A pool target needs an agreement in force between ``institution`` and the
    pool; a person target must read for ``institution`` (its radiologist or a
    member of a pool with an agreement, credentialled for it).
    """
    policy = parse(definition)
    errs = _Collector()
    agreements = {
        str(a.pool_id): a
        for a in ReadingAgreement.objects.filter(hospital=institution).select_related("pool")
        if a.in_force()
    }
    for path, target in _all_targets(policy):
        if target.kind == "pool":
            if target.pool not in agreements:
                exists = RadiologistPool.objects.filter(pk=target.pool).exists()
                errs.add(path, "no reading agreement in force with this pool" if exists else "no such pool")
            elif target.subspecialty and not any(
                target.subspecialty in [s.lower() for s in m.subspecialties]
                for m in PoolMember.objects.filter(pool_id=uuid.UUID(target.pool), is_active=True)
            ):
                errs.add(path, f"no member of this pool has the subspecialty {target.subspecialty!r}")
        elif target.kind == "person":
            user = User.objects.filter(username=target.user, is_active=True).first()
            if user is None:
                errs.add(path, f"no active user {target.user!r}")
            elif not _reads_for(user, institution, agreements):
                errs.add(path, f"{target.user} does not read for {institution.name}")
    if errs.errors:
        raise PolicyError(errs.errors)
    return policy


def _reads_for(user: User, institution: Institution, agreements: dict[str, ReadingAgreement]) -> bool:
    if Membership.objects.filter(user=user, institution=institution, role=Role.RADIOLOGIST, is_active=True).exists():
        return True
    return PoolMember.objects.filter(
        user=user, is_active=True, pool_id__in=[uuid.UUID(k) for k in agreements], credentialed_for=institution
    ).exists()


def _all_targets(policy: Policy) -> list[tuple[str, Target]]:
    out: list[tuple[str, Target]] = []
    for name, rule in [*((f"rules[{i}]", r) for i, r in enumerate(policy.rules)), ("fallback", policy.fallback)]:
        for level, step in enumerate(rule.steps):
            base = f"{name}.offer_to" if level == 0 else f"{name}.escalation[{level - 1}].offer_to"
            out.extend((f"{base}[{i}]", t) for i, t in enumerate(step.offer_to))
    return out


# Resolving the path a study takes ------------------------------------------


def local_time(institution: Institution, at: datetime) -> datetime:
    try:
        zone = ZoneInfo(institution.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return at.astimezone(zone)


# Routing reads a hospital's agreements for every study; they change rarely, so
# each process keeps them for a few seconds (cleared at once in the process
# that saves one, by the signals connected in apps.py).
AGREEMENT_CACHE_SECONDS = 30
_agreement_cache: dict[Any, tuple[float, list[ReadingAgreement]]] = {}


def agreements_of(institution: Institution) -> list[ReadingAgreement]:
    now = monotonic()
    hit = _agreement_cache.get(institution.pk)
    if hit is not None and now - hit[0] < AGREEMENT_CACHE_SECONDS:
        return hit[1]
    rows = list(ReadingAgreement.objects.filter(hospital=institution).select_related("pool"))
    _agreement_cache[institution.pk] = (now, rows)
    return rows


def clear_agreement_cache(**_kwargs: Any) -> None:
    _agreement_cache.clear()


class _Labels:
    """Names of pools and people for plans and diagrams, loaded once."""

    def __init__(self, policy: Policy | None = None, known: dict[str, str] | None = None) -> None:
        ids = {t.pool for _, t in _all_targets(policy) if t.kind == "pool"} if policy else set()
        self.pools = dict(known or {})
        missing = ids - set(self.pools)
        if missing:
            self.pools.update({str(p.pk): p.name for p in RadiologistPool.objects.filter(pk__in=missing)})

    def target(self, target: Target, institution: Institution) -> str:
        if target.kind == "own":
            return f"{institution.name} radiologists"
        if target.kind == "pool":
            name = self.pools.get(target.pool, "unknown pool")
            return f"{name} ({target.subspecialty})" if target.subspecialty else name
        return target.user


def resolve(policy: Policy | None, institution: Institution, facts: StudyFacts, at: datetime) -> dict[str, Any]:
    """The plan a study follows: matched rule, evaluations and every step with its SLA.

    The plan is stored on the process instance, so later policy versions cannot
    change it. Pool targets whose agreement does not cover the study (modality,
    body part, dates) are dropped with a note; a first step left empty falls
    back to the hospital's own radiologists.
    """
    policy = policy or parse({})
    local = local_time(institution, at)
    index, rule, evaluations = policy.match(facts, local)
    rows = agreements_of(institution)
    agreements = {str(a.pool_id): a for a in rows if a.in_force(local.date())}
    labels = _Labels(policy, {str(a.pool_id): a.pool.name for a in rows})
    notes: list[str] = []
    steps: list[dict[str, Any]] = []
    for level, step in enumerate(rule.steps):
        targets = []
        for target in step.offer_to:
            if target.kind == "pool":
                agreement = agreements.get(target.pool)
                if agreement is None or not agreement.covers(facts.modality, facts.body_part):
                    notes.append(
                        f"level {level}: {labels.target(target, institution)} skipped (no agreement covering this study)"
                    )
                    continue
            targets.append(target)
        if not targets and level == 0:
            notes.append("no usable target: offered to the hospital's own radiologists")
            targets = [Target("own")]
        if not targets:
            continue
        steps.append(
            {
                "level": len(steps),
                "offer_to": [t.as_dict() | {"label": labels.target(t, institution)} for t in targets],
                "sla_minutes": _step_sla(step, targets, agreements, policy.default_sla),
            }
        )
    return {
        "rule_index": index,
        "rule_name": rule.name,
        "double_reading": rule.double_reading,
        "steps": steps,
        "notes": notes,
        "evaluations": evaluations,
        "local_time": local.isoformat(),
    }


def _step_sla(
    step: Step, targets: list[Target], agreements: dict[str, ReadingAgreement], default: dict[str, int]
) -> dict[str, int]:
    out = {}
    for priority in PRIORITIES:
        minutes = step.sla_minutes.get(priority)
        if minutes is None:
            contractual = [
                agreements[t.pool].sla_minutes.get(priority)
                for t in targets
                if t.kind == "pool" and t.pool in agreements
            ]
            contractual = [m for m in contractual if isinstance(m, int) and m > 0]
            minutes = min(contractual) if contractual else None
        if minutes is None:
            minutes = default.get(priority) or settings.WORKFLOW_DEFAULT_SLA_MINUTES[priority]
        out[priority] = minutes
    return out


def dry_run(
    policy: Policy | None, institution: Institution, facts: StudyFacts, at: datetime | None = None
) -> dict[str, Any]:
    """What would happen to a study with ``facts`` completing at ``at``; nothing is saved."""
    at = at or timezone.now()
    plan = resolve(policy, institution, facts, at)
    minutes_total = 0
    path = []
    for step in plan["steps"]:
        minutes = step["sla_minutes"][facts.priority]
        path.append(
            {
                "level": step["level"],
                "offer_to": [t["label"] for t in step["offer_to"]],
                "sla_minutes": minutes,
                "offered_at": (at + timedelta(minutes=minutes_total)).isoformat(),
                "due_at": (at + timedelta(minutes=minutes_total + minutes)).isoformat(),
            }
        )
        minutes_total += minutes
    tasks = ["read", "second_read", "reconciliation"] if plan["double_reading"] else ["read"]
    return {
        "facts": facts.as_dict(),
        "at": at.isoformat(),
        "local_time": plan["local_time"],
        "matched": {"index": plan["rule_index"], "name": plan["rule_name"]},
        "evaluations": plan["evaluations"],
        "tasks": tasks,
        "path": path,
        "notes": plan["notes"],
    }
