"""No route gives a user of one institution anything of another's (see ``tests.isolation``)."""

import pytest

from pacs_cloud.models import Role
from tests.conftest import web_client

from .harness import attackers, coverage_problems, discover, report, unreachable, walk

WALKERS = [f"{key}.{role.value}" for key in "abc" for role in Role] + ["platform", "anonymous"]


def test_every_route_is_filled_and_every_reference_exists(world, registry):
    problems = coverage_problems(discover(), registry, world)
    assert not problems, "\n".join(problems)


def test_every_object_route_reaches_its_owners_object(world, registry, platform_admin):
    owner = world["a"]
    users = [*owner.tenant.users.values(), platform_admin]
    problems = unreachable(discover(), registry, owner, users)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("walker", WALKERS)
def test_nobody_gets_anything_of_another_institution(world, registry, platform_admin, walker):
    attacker = next(a for a in attackers(world, platform_admin) if a.label == walker)
    violations = walk(discover(), registry, world, attacker)
    assert not violations, f"{len(violations)} isolation failures:\n{report(violations)}"


def test_tenant_users_never_reach_admin(tenants):
    for user in tenants.a.users.values():
        response = web_client(user).get("/admin/pacs_cloud/user/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
