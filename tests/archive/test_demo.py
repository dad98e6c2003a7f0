"""The archive's part of the demo: the modalities of DESIGN.md may call the cloud, studies complete in seconds."""

from archive import demo
from archive.models import ArchivePolicy, BreakGlassAllowance, DicomNode
from pacs_cloud import demo as platform_demo
from pacs_cloud.models import Institution


def test_the_demo_nodes_and_stability_window_are_seeded_idempotently(db):
    platform_demo.seed()
    first = demo.seed()
    second = demo.seed()
    assert first == second and len(first) == 3
    [allowance] = BreakGlassAllowance.objects.select_related("institution", "allowed")
    assert (allowance.institution.slug, allowance.allowed.slug) == ("riverside", "central")
    nodes = {n.ae_title: n for n in DicomNode.objects.select_related("institution")}
    # Only the hospitals' modalities: the benchmark harness registers its own AE when it runs.
    assert set(nodes) == {"RIVERSIDE_CT", "HILLSIDE_MR"}
    assert nodes["RIVERSIDE_CT"].institution.slug == "riverside"
    assert nodes["HILLSIDE_MR"].institution.slug == "hillside"
    assert all(n.host == "127.0.0.1" and n.is_active for n in nodes.values())
    assert set(ArchivePolicy.objects.values_list("stability_seconds", flat=True)) == {demo.DEMO_STABILITY_SECONDS}
    assert demo.DEMO_STABILITY_SECONDS < 60


def test_seeding_removes_the_benchmark_node_earlier_demos_registered(db):
    platform_demo.seed()
    ae_title, description = demo.FORMER_BENCH_NODE
    DicomNode.objects.create(
        institution=Institution.objects.get(slug="riverside"),
        ae_title=ae_title,
        host="127.0.0.1",
        description=description,
    )
    demo.seed()
    assert not DicomNode.objects.filter(ae_title="BENCHSCU").exists()
