"""The isolation harness with grants: a shared study opens to the receiving institution, and only it.

The harness (``tests/isolation``) proves that no route gives one institution
anything of another's. A referral or share is the one sanctioned exception,
so this module walks the same routes around one. Institution a refers one
more study (of a patient of its own, nothing else hangs on it) to b:

* while it is shared, every study route answers b's clinician exactly as it
  answers a's own clinician (REST, QIDO-RS, WADO-RS, rendered images, the
  viewer), and the outsider c still gets nothing;
* meanwhile the full walk as each of b's sharing roles still finds nothing of
  a's other objects (the grant opens one study, not the institution);
* once the referral ends, the full walk (as b's radiologist) with the formerly shared study
  standing in for a's objects passes for b's users: revoked means closed on
  every route.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import api_client
from tests.isolation.harness import ask, attackers, client_for, discover, report, walk
from tests.samples import SampleStudy, store_sample_study
from workflow.referrals import actions
from workflow.referrals.models import Referral

STUDY_PARAMS = {"study_uid", "series_uid", "instance_uid", "sop_uid", "study_id", "series_id", "instance_id"}


def _extra_study(world) -> SampleStudy:
    return store_sample_study(
        world["a"].tenant.institution,
        patient_name="Sharedsecret^Person",
        patient_id="PID-sharedsecret",
        accession="ACCSHARED",
    )


def _values(world, made: SampleStudy) -> dict[str, str]:
    values = dict(world["a"].values)
    values.update(
        {
            "patient.id": str(made.study.patient_id),
            "patient.patient_id": made.patient_id,
            "study.id": str(made.study.pk),
            "study.uid": made.study.study_instance_uid,
            "series.id": str(made.series.pk),
            # The viewer's volume routes (3D, reformats) name the series this way.
            "volume.series.id": str(made.series.pk),
            "volume.study.id": str(made.study.pk),
            "series.uid": made.series.series_instance_uid,
            "instance.id": str(made.instance.pk),
            "instance.uid": made.instance.sop_instance_uid,
        }
    )
    return values


def _share(world, made: SampleStudy) -> Referral:
    """Refer the study's patient from a to b (sent: shared with b's clinicians, radiologists and coordinators)."""
    a, b = world["a"].tenant, world["b"].tenant
    referral = actions.do_create_referral(
        acting_user=a.referral_coordinator,
        from_institution=a.institution,
        to_institution=b.institution,
        patient=made.study.patient,
        reason="isolation with a grant",
        studies=[made.study],
    )
    actions.do_record_consent(referral, acting_user=a.referral_coordinator, method="verbal")
    return actions.do_send_referral(referral, acting_user=a.referral_coordinator)


def _study_routes(registry):
    for route in discover():
        if route.params and set(route.params) <= STUDY_PARAMS | {"frames", "path"} and "get" in route.methods:
            if not registry.exemption(route.template):
                yield route


def _path(route, registry, values):
    path = route.template
    for name in route.params:
        filler = registry.filler(route.template, name)
        value = filler.value if hasattr(filler, "value") else values[filler.name]
        path = path.replace("{" + name + "}", str(value))
    return path


def test_a_shared_study_opens_on_every_study_route_for_the_receiver_only(world, registry):
    a, b, c = (world[k].tenant for k in "abc")
    made = _extra_study(world)
    values = _values(world, made)
    owner, grantee, outsider = client_for(a.clinician), client_for(b.clinician), client_for(c.clinician)
    routes = list(_study_routes(registry))
    assert len(routes) > 15, "the study routes of the archive and viewer are walked"
    before = {}
    for route in routes:
        path = _path(route, registry, values)
        before[path] = ask(grantee, "get", path).status
    assert set(before.values()) <= {403, 404, 405}, before

    referral = _share(world, made)
    opened = 0
    for route in routes:
        path = _path(route, registry, values)
        mine, theirs = ask(owner, "get", path).status, ask(grantee, "get", path).status
        assert theirs == mine, f"{path}: a's clinician gets {mine}, b's clinician {theirs}"
        assert ask(outsider, "get", path).status in {403, 404, 405}, path
        opened += 200 <= theirs < 300
    assert opened >= 10

    actions.do_cancel_referral(referral, acting_user=a.referral_coordinator, reason="isolation done")
    for route in routes:
        path = _path(route, registry, values)
        assert ask(grantee, "get", path).status == before[path], path


@pytest.mark.parametrize("role", ["clinician", "radiologist", "referral_coordinator"])
def test_while_shared_nothing_else_of_the_sender_reaches_the_receiver(world, registry, platform_admin, role):
    made = _extra_study(world)
    _share(world, made)
    attacker = next(x for x in attackers(world, platform_admin) if x.label == f"b.{role}")
    violations = walk(discover(), registry, world, attacker)
    assert not violations, report(violations)
    assert api_client(attacker.user).get(f"/api/v1/studies/{made.study.pk}/").status_code == 200


def test_once_revoked_the_formerly_shared_study_is_closed_on_every_route(world, registry, platform_admin):
    """The full walk as b's radiologist, whose role reaches the most routes, with the study standing in for a's
    objects (the study routes are checked for b's clinician in the first test)."""
    made = _extra_study(world)
    referral = _share(world, made)
    attacker = next(x for x in attackers(world, platform_admin) if x.label == "b.radiologist")
    assert api_client(attacker.user).get(f"/api/v1/studies/{made.study.pk}/").status_code == 200
    actions.do_cancel_referral(referral, acting_user=world["a"].tenant.referral_coordinator, reason="done")
    a = world["a"]
    after = {
        **world,
        "a": replace(
            a, values=_values(world, made), secrets=[*a.secrets, "Sharedsecret", "PID-sharedsecret", "ACCSHARED"]
        ),
    }
    violations = walk(discover(), registry, after, attacker)
    assert not violations, report(violations)
