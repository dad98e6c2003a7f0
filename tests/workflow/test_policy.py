"""Routing policies: validation on save, rule matching, the dry run, pinned versions."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tests.workflow.conftest import make_radiologist, make_study, save_policy
from workflow import policy
from workflow.actions import do_start_reading_process
from workflow.facts import study_facts
from workflow.models import RoutingPolicy
from workflow.policy import PolicyError, StudyFacts


def six_rules(pool_id: str) -> dict:
    pool = {"kind": "pool", "pool": pool_id}
    return {
        "default_sla_minutes": {"stat": 45, "urgent": 180, "routine": 1200},
        "rules": [
            {"name": "Paediatric", "when": {"max_age": 15}, "offer_to": [pool], "sla_minutes": {"routine": 600}},
            {
                "name": "Stat heads",
                "when": {"body_parts": ["HEAD"], "priorities": ["stat"]},
                "offer_to": [{"kind": "pool", "pool": pool_id, "subspecialty": "neuro"}],
            },
            {
                "name": "Night",
                "when": {"hours": {"from": "20:00", "to": "08:00"}},
                "offer_to": [pool],
                "escalation": [{"offer_to": [{"kind": "own"}], "sla_minutes": {"routine": 60}}],
            },
            {"name": "Weekend", "when": {"weekdays": ["sat", "sun"]}, "offer_to": [pool]},
            {
                "name": "Mammography",
                "when": {"modalities": ["MG"]},
                "offer_to": [{"kind": "own"}, pool],
                "double_reading": True,
            },
            {"name": "Chest code", "when": {"procedure_codes": ["CTCHEST"]}, "offer_to": [{"kind": "own"}]},
        ],
        "fallback": {"offer_to": [{"kind": "own"}], "escalation": [{"offer_to": [pool]}]},
    }


# Shanghai is UTC+8: 2026-11-02 is a Monday.
MONDAY_NOON_LOCAL = datetime(2026, 11, 2, 4, 0, tzinfo=UTC)
MONDAY_2300_LOCAL = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
SATURDAY_NOON_LOCAL = datetime(2026, 11, 7, 4, 0, tzinfo=UTC)


@pytest.fixture
def defn(centre):
    return six_rules(str(centre.pool.pk))


def facts(**kw) -> StudyFacts:
    base = {"modality": "CT", "modalities": ["CT"], "body_part": "ABDOMEN", "patient_age": 40}
    return StudyFacts(**(base | kw))


@pytest.mark.parametrize(
    ("study", "at", "rule"),
    [
        (facts(patient_age=9), MONDAY_NOON_LOCAL, "Paediatric"),
        (facts(body_part="HEAD", priority="stat"), MONDAY_NOON_LOCAL, "Stat heads"),
        (facts(body_part="HEAD", priority="routine"), MONDAY_NOON_LOCAL, "Fallback"),
        (facts(), MONDAY_2300_LOCAL, "Night"),
        (facts(), SATURDAY_NOON_LOCAL, "Weekend"),
        (facts(modality="MG", modalities=["MG", "SR"]), MONDAY_NOON_LOCAL, "Mammography"),
        (facts(procedure_code="CTCHEST"), MONDAY_NOON_LOCAL, "Chest code"),
        (facts(patient_age=None), MONDAY_NOON_LOCAL, "Fallback"),
    ],
)
def test_the_first_matching_rule_decides(tenants, defn, study, at, rule):
    parsed = policy.validate(defn, tenants.a.institution)
    result = policy.dry_run(parsed, tenants.a.institution, study, at)
    assert result["matched"]["name"] == rule


def test_the_dry_run_shows_every_rule_and_the_whole_path(tenants, defn):
    parsed = policy.validate(defn, tenants.a.institution)
    result = policy.dry_run(parsed, tenants.a.institution, facts(), MONDAY_2300_LOCAL)
    assert result["matched"] == {"index": 2, "name": "Night"}
    assert result["local_time"].startswith("2026-11-02T23:00")
    first = result["evaluations"][0]
    assert first == {"index": 0, "name": "Paediatric", "matched": False, "failed": ["patient age 40 over 15"]}
    assert [s["offer_to"] for s in result["path"]] == [["Delta night pool"], ["Alpha County Hospital radiologists"]]
    # Level 0 takes the agreement's routine SLA (720 min), then the step's own 60 minutes.
    assert [s["sla_minutes"] for s in result["path"]] == [720, 60]
    assert result["path"][1]["due_at"].startswith("2026-11-03T04:00")
    assert result["tasks"] == ["read"]


def test_double_reading_plans_two_reads_and_a_reconciliation(tenants, defn):
    parsed = policy.validate(defn, tenants.a.institution)
    result = policy.dry_run(parsed, tenants.a.institution, facts(modality="MG", modalities=["MG"]), MONDAY_NOON_LOCAL)
    assert result["tasks"] == ["read", "second_read", "reconciliation"]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (lambda d: d["rules"][0].pop("name"), "rules[0].name", "every rule needs a name"),
        (
            lambda d: d["rules"][0]["when"].update(hours={"from": "25:00", "to": "08:00"}),
            "rules[0].when.hours.from",
            "HH:MM",
        ),
        (lambda d: d["rules"][0]["when"].update(weekdays=["funday"]), "rules[0].when.weekdays", "not one of"),
        (lambda d: d["rules"][0]["when"].update(priorities=["asap"]), "rules[0].when.priorities", "not one of"),
        (lambda d: d["rules"][0]["when"].update(min_age=20, max_age=10), "rules[0].when.min_age", "above max_age"),
        (lambda d: d["rules"][0].update(offer_to=[]), "rules[0].offer_to", "non-empty list"),
        (lambda d: d["rules"][0].update(offer_to=[{"kind": "robot"}]), "rules[0].offer_to[0]", "kind one of"),
        (lambda d: d["rules"][0].update(sla_minutes={"stat": 0}), "rules[0].sla_minutes.stat", "whole minutes"),
        (lambda d: d["rules"][0].update(colour="red"), "rules[0].colour", "unknown field"),
        (lambda d: d["rules"][0]["when"].update(moon="full"), "rules[0].when.moon", "unknown condition"),
        (lambda d: d["rules"][1].update(name="Paediatric"), "rules", "two rules are named"),
        (lambda d: d["rules"][0].update(double_reading="yes"), "rules[0].double_reading", "true or false"),
    ],
)
def test_an_invalid_definition_is_refused_with_the_path_of_the_error(tenants, defn, mutate, path, message):
    mutate(defn)
    with pytest.raises(PolicyError) as error:
        save_policy(tenants.a.institution, defn)
    assert any(p == path and message in m for p, m in error.value.errors), error.value.errors
    assert not RoutingPolicy.objects.exists()


def test_a_pool_without_an_agreement_is_refused(tenants, centre):
    defn = {"rules": [{"name": "All", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]}
    with pytest.raises(PolicyError) as error:
        save_policy(tenants.c.institution, defn)  # c has no agreement with the pool
    assert error.value.errors == [("rules[0].offer_to[0]", "no reading agreement in force with this pool")]


def test_a_person_must_read_for_the_hospital(tenants, centre):
    outsider = make_radiologist(tenants.c.institution, "rad2@charlie")
    for username, ok in [(outsider.username, False), (centre.readers[0].username, True), ("radiologist@alpha", True)]:
        defn = {"rules": [{"name": "Named", "offer_to": [{"kind": "person", "user": username}]}]}
        if ok:
            save_policy(tenants.a.institution, defn)
        else:
            with pytest.raises(PolicyError, match="does not read for"):
                save_policy(tenants.a.institution, defn)


def test_a_subspecialty_nobody_has_is_refused(tenants, centre):
    defn = {
        "rules": [
            {"name": "Cardiac", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk), "subspecialty": "cardiac"}]}
        ]
    }
    with pytest.raises(PolicyError, match="subspecialty"):
        save_policy(tenants.a.institution, defn)


def test_saving_makes_a_new_version_and_running_processes_keep_theirs(tenants, centre, defn):
    v1 = save_policy(tenants.a.institution, {"rules": [{"name": "Own", "offer_to": [{"kind": "own"}]}]})
    running = do_start_reading_process(make_study(tenants.a.institution))
    v2 = save_policy(tenants.a.institution, defn)
    assert (v1.version, v2.version) == (1, 2)
    v1.refresh_from_db()
    assert not v1.is_current and v2.is_current
    running.refresh_from_db()
    assert running.policy == v1 and running.rule_name == "Own"
    assert running.tasks.get().offers.get().kind == "own"
    later = do_start_reading_process(make_study(tenants.a.institution, birth_date=date(2020, 1, 1)))
    assert later.policy == v2 and later.rule_name == "Paediatric"


def test_without_an_order_the_images_supply_the_facts(tenants):
    study = make_study(tenants.a.institution, modality="MR", body_part="knee", birth_date=date(2000, 11, 3))
    found = study_facts(study)
    assert (found.modality, found.body_part, found.patient_age, found.priority, found.source) == (
        "MR",
        "KNEE",
        25,
        "routine",
        "images",
    )


def test_a_pool_whose_agreement_does_not_cover_the_study_is_skipped(tenants, centre):
    centre.agreement.modalities = ["MR"]
    centre.agreement.save()
    parsed = policy.validate(
        {"rules": [{"name": "All", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]}, tenants.a.institution
    )
    result = policy.dry_run(parsed, tenants.a.institution, facts(), MONDAY_NOON_LOCAL)
    assert result["path"][0]["offer_to"] == ["Alpha County Hospital radiologists"]
    assert "skipped" in result["notes"][0]
