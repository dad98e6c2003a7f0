"""Isolation harness registrations of the reading workflow: pools, agreements, policies, tasks."""

import secrets

from archive.models import Study
from tests import isolation
from workflow.actions import do_claim_reading_task, do_save_routing_policy, do_start_reading_process
from workflow.models import PoolMember, RadiologistPool, ReadingAgreement


@isolation.factory
def reading_workflow(tenant):
    """A pool of the institution reading only for itself, its policy, and a claimed task on its archived study."""
    token = secrets.token_hex(4)
    institution = tenant.institution
    pool = RadiologistPool.objects.create(owner=institution, name=f"PoolSecret{token}")
    member = PoolMember.objects.create(pool=pool, user=tenant.radiologist, subspecialties=[f"sub{token}"])
    member.credentialed_for.set([institution])
    agreement = ReadingAgreement.objects.create(hospital=institution, pool=pool)
    policy = do_save_routing_policy(
        institution,
        {
            "rules": [
                {"name": f"RuleSecret{token}", "offer_to": [{"kind": "own"}, {"kind": "pool", "pool": str(pool.pk)}]}
            ]
        },
        acting_user=tenant.institution_admin,
        name=f"PolicySecret{token}",
    )
    study = Study.objects.select_related("institution", "patient").get(pk=tenant.made["study.id"])
    task = do_start_reading_process(study).tasks.get()
    do_claim_reading_task(task, acting_user=tenant.radiologist)
    return isolation.Made(
        values={
            "reading_task.id": task.pk,
            "pool.id": pool.pk,
            "pool_member.id": member.pk,
            "agreement.id": agreement.pk,
            "policy.id": policy.pk,
            "radiologist.username": tenant.radiologist.username,
        },
        secrets=[pool.name, policy.name, f"RuleSecret{token}", f"sub{token}"],
    )


for template in [
    "/api/v1/reading-tasks/{pk}/",
    "/api/v1/reading-tasks/{pk}/history/",
    "/workflow/tasks/{pk}/",
]:
    isolation.route(template, pk="reading_task.id")
isolation.route(
    "/workflow/tasks/{pk}/open/",
    pk="reading_task.id",
    reachable=False,
    reason="audits the open and redirects (302) to the viewer or the task page",
)
isolation.route("/api/v1/reading-tasks/{pk}/claim/", pk="reading_task.id", reachable=False, reason="POST only")
isolation.route(
    "/api/v1/reading-tasks/{pk}/release/",
    pk="reading_task.id",
    reachable=False,
    reason="POST only",
    bodies={"post": {"reason": "isolation"}},
)
isolation.route(
    "/api/v1/reading-tasks/{pk}/reassign/",
    pk="reading_task.id",
    reachable=False,
    reason="POST only",
    bodies={"post": {"user": isolation.Ref("radiologist.username"), "reason": "isolation"}},
)
isolation.route("/workflow/tasks/{pk}/claim/", pk="reading_task.id", reachable=False, reason="POST only")
isolation.route(
    "/workflow/tasks/{pk}/release/",
    pk="reading_task.id",
    reachable=False,
    reason="POST only",
    bodies={"post": isolation.Form({"reason": "isolation"})},
)
isolation.route("/api/v1/reading-tasks/", queries=[{"hospital": isolation.Ref("institution.id"), "view": "all"}])
isolation.route("/workflow/", queries=[{"hospital": isolation.Ref("institution.id")}])
isolation.route("/workflow/rows/", queries=[{"hospital": isolation.Ref("institution.id"), "view": "claimed"}])

isolation.route("/api/v1/pools/{pk}/", pk="pool.id", bodies={"patch": {"claim_cap": 1}})
isolation.route(
    "/api/v1/pool-members/",
    queries=[{"pool": isolation.Ref("pool.id")}],
    bodies={
        "post": {
            "pool": isolation.Ref("pool.id"),
            "user": isolation.Ref("radiologist.username"),
            "credentialed_for": [],
        }
    },
)
isolation.route("/api/v1/pool-members/{pk}/", pk="pool_member.id", bodies={"patch": {"claim_cap": 1}})
isolation.route("/api/v1/reading-agreements/{pk}/", pk="agreement.id", bodies={"patch": {"is_active": False}})
isolation.route(
    "/api/v1/reading-agreements/",
    bodies={"post": {"hospital": isolation.Ref("institution.id"), "pool": isolation.Ref("pool.id")}},
)
isolation.route(
    "/workflow/pools/{pk}/members/",
    pk="pool.id",
    reachable=False,
    reason="POST only",
    bodies={"post": isolation.Form({"username": isolation.Ref("radiologist.username")})},
)
isolation.route(
    "/workflow/pool-members/{pk}/",
    pk="pool_member.id",
    reachable=False,
    reason="POST only",
    bodies={"post": isolation.Form({"subspecialties": "isolation"})},
)

isolation.route("/api/v1/routing-policies/{pk}/", pk="policy.id")
isolation.route("/api/v1/routing-policies/{pk}/diagram/", pk="policy.id")
isolation.route(
    "/api/v1/routing-policies/{pk}/dry-run/",
    pk="policy.id",
    reachable=False,
    reason="POST only",
    bodies={"post": {"study": isolation.Ref("study.id")}},
)
isolation.route(
    "/api/v1/routing-policies/",
    bodies={"post": {"institution": isolation.Ref("institution.id"), "definition": {"rules": []}}},
)
isolation.route(
    "/api/v1/routing-policies/dry-run/",
    reachable=False,
    reason="POST only",
    bodies={
        "post": {
            "institution": isolation.Ref("institution.id"),
            "definition": {"rules": []},
            "study": isolation.Ref("study.id"),
        }
    },
)
isolation.route("/workflow/policies/{pk}/", pk="policy.id")
isolation.route("/workflow/policies/{pk}/diagram.svg", pk="policy.id")

# Onboarding: the checklist of an institution its administrator sets up.
isolation.route("/api/v1/onboarding/{institution_id}/", institution_id="institution.id")
isolation.route(
    "/api/v1/onboarding/{institution_id}/dicom-nodes/{node_id}/echo/",
    institution_id="institution.id",
    node_id="dicom_node.id",
    reachable=False,
    reason="POST only: a C-ECHO",
)
isolation.route(
    "/api/v1/onboarding/{institution_id}/procedures/",
    institution_id="institution.id",
    reachable=False,
    reason="POST only: a CSV upload",
    also_allowed={400, 415},
)
isolation.route(
    "/api/v1/onboarding/{institution_id}/routing-policy/",
    institution_id="institution.id",
    reachable=False,
    reason="POST only: a template",
    bodies={"post": {"template": "own"}},
)
isolation.route(
    "/api/v1/onboarding/{institution_id}/edge/",
    institution_id="institution.id",
    reachable=False,
    reason="POST only: an enrolment",
    bodies={"post": {"name": "Intruder edge"}},
)
