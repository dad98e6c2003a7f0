"""The archive's part of the demo: the DICOM nodes allowed to call the cloud, and a short stability window."""

from __future__ import annotations

from django.db import transaction
from django.db.models import ProtectedError

from pacs_cloud.models import Institution

from .actions import do_delete_dicom_node
from .breakglass.actions import do_allow_break_glass
from .models import ArchivePolicy, DicomNode

# ae title, institution slug, allowed host, port (where C-MOVE sends to it), description
NODES = [
    ("RIVERSIDE_CT", "riverside", "127.0.0.1", None, "Riverside CT scanner"),
    ("HILLSIDE_MR", "hillside", "127.0.0.1", None, "Hillside MR scanner"),
]
# The benchmark harness registers its own calling AE (bench/archive_bench.py): a
# hospital's demo lists only its modalities. Earlier demos registered it; a
# seed removes that node again (only that one: same title and description).
FORMER_BENCH_NODE = ("BENCHSCU", "Benchmark and test tools")
DEMO_STABILITY_SECONDS = 10  # a demo study is complete (and routed) seconds after its last image


@transaction.atomic
def seed() -> list[str]:
    """Create or refresh the demo's DICOM nodes; returns lines to print."""
    lines = []
    ae_title, description = FORMER_BENCH_NODE
    for former in DicomNode.objects.filter(ae_title=ae_title, description=description):
        try:
            do_delete_dicom_node(former, acting_user=None)
        except ProtectedError:
            pass  # someone made it a station since: theirs to keep
    for ae_title, slug, host, port, description in NODES:
        institution = Institution.objects.get(slug=slug)
        DicomNode.objects.update_or_create(
            ae_title=ae_title,
            defaults={
                "institution": institution,
                "host": host,
                "port": port,
                "description": description,
                "is_active": True,
            },
        )
        lines.append(f"{ae_title:<18} DICOM AE of {institution.name}: may call PACSCLOUD at 127.0.0.1:11112")
    for found in Institution.objects.filter(slug__in=["riverside", "hillside", "central", "expert"]):
        ArchivePolicy.objects.update_or_create(
            institution=found, defaults={"stability_seconds": DEMO_STABILITY_SECONDS}
        )
    # Central City's clinicians and radiologists may break glass on Riverside's studies
    # (the tertiary hospital its patients are referred up to).
    riverside = Institution.objects.get(slug="riverside")
    central = Institution.objects.get(slug="central")
    do_allow_break_glass(riverside, central, acting_user=None)
    lines.append("Break-glass: Central City Hospital's doctors may open Riverside studies in an emergency")
    return lines
