"""The harness fails on unsafe views: proof that the green walk means something."""

import pytest

from .harness import attackers, coverage_problems, discover, walk

UNSAFE = "tests.isolation.unsafe_urls"


@pytest.fixture
def unsafe(settings, registry):
    settings.ROOT_URLCONF = UNSAFE
    extended = registry.copy()
    extended.route("/api/v1/unsafe/studies/{study_id}/", study_id="study.id")
    extended.route("/api/v1/unsafe/oracle/{study_id}/", study_id="study.id")
    return extended


def walk_as(world, registry, platform_admin, label):
    attacker = next(a for a in attackers(world, platform_admin) if a.label == label)
    return walk(discover(UNSAFE), registry, world, attacker)


def test_it_reports_a_view_that_returns_another_institutions_object(world, unsafe, platform_admin):
    violations = walk_as(world, unsafe, platform_admin, "c.clinician")
    on_study = [v for v in violations if v.path.startswith("/api/v1/unsafe/studies/")]
    problems = " | ".join(v.problem for v in on_study)
    assert "answered 200 for a's object" in problems and "answered 200 for b's object" in problems
    # The archive factory's patient family name shares its token with the patient ID.
    token = next(s for s in world["a"].secrets if s.startswith("PID-")).removeprefix("PID-")
    family_a = f"Secret{token}"
    assert f"shows a:{family_a}" in problems


def test_it_reports_a_list_that_is_not_filtered(world, unsafe, platform_admin):
    violations = walk_as(world, unsafe, platform_admin, "anonymous")
    listed = {v.problem for v in violations if v.path == "/api/v1/unsafe/patients/"}
    for key in "abc":
        patient_id = next(s for s in world[key].secrets if s.startswith("PID-"))
        assert f"shows {key}:{patient_id}" in listed


def test_it_reports_a_view_that_tells_whether_an_object_exists(world, unsafe, platform_admin):
    violations = walk_as(world, unsafe, platform_admin, "b.radiologist")
    oracle = [v.problem for v in violations if v.path.startswith("/api/v1/unsafe/oracle/")]
    assert any("answered 403 for a's object but 404 for a missing one" in p for p in oracle)
    assert not any("shows" in p for p in oracle)


def test_it_reports_a_route_nobody_registered(world, unsafe):
    problems = coverage_problems(discover(UNSAFE), unsafe, world, UNSAFE)
    assert any(p.startswith("/dicomweb/unsafe/{widget}/: nothing fills {widget}") for p in problems)


def test_it_reports_a_factory_value_that_reaches_nothing(world, unsafe, platform_admin):
    from .harness import unreachable

    owner = world["a"]
    owner.values["study.id"] = "00000000-0000-4000-8000-000000000000"
    problems = unreachable(discover(UNSAFE), unsafe, owner, [*owner.tenant.users.values(), platform_admin])
    assert any(p.startswith("/api/v1/unsafe/studies/00000000") for p in problems)


def test_the_product_routes_pass_in_the_same_configuration(world, unsafe, platform_admin):
    violations = walk_as(world, unsafe, platform_admin, "c.clinician")
    assert not [v for v in violations if "/unsafe/" not in v.path]
