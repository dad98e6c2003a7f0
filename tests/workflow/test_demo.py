"""The demo's reading workflow: the expert pool and the Riverside and Hillside policies."""

from __future__ import annotations

from pacs_cloud import demo as platform_demo
from pacs_cloud.models import Institution, User
from tests.workflow.conftest import make_study
from workflow import demo
from workflow.access import offered_tasks
from workflow.actions import do_start_reading_process
from workflow.models import PoolMember, RoutingPolicy


def test_the_demo_pool_and_policies_route_as_the_design_says(db):
    platform_demo.seed()
    demo.seed()
    demo.seed()  # idempotent: no second version, no second member
    assert RoutingPolicy.objects.filter(institution__slug="riverside").count() == 1
    member = PoolMember.objects.get(user__username="rad@expert")
    assert {i.slug for i in member.credentialed_for.all()} == {"riverside", "hillside", "central"}
    expert, own = User.objects.get(username="rad@expert"), User.objects.get(username="rad@riverside")

    riverside = do_start_reading_process(make_study(Institution.objects.get(slug="riverside"))).tasks.get()
    assert riverside in offered_tasks(expert) and riverside in offered_tasks(own)

    hillside = do_start_reading_process(make_study(Institution.objects.get(slug="hillside"), modality="MR")).tasks.get()
    assert hillside in offered_tasks(expert) and hillside not in offered_tasks(own)
