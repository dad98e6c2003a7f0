"""The demo's report: a Riverside CT signed final through the real path, and the templates."""

from __future__ import annotations

from django.conf import settings
from django.test import TestCase
from django.utils.module_loading import import_string

from archive.models import Instance, Study
from reports import exports, signing
from reports.demo import DEMO_PATIENT
from reports.models import Report, ReportTemplate
from workflow.models import ReadingTask
from worklist.models import Order


def test_the_demo_has_a_signed_final_report_made_the_real_way(db):
    with TestCase.captureOnCommitCallbacks(execute=True):
        for dotted in settings.DEMO_SEEDERS:
            import_string(dotted)()
    report = Report.objects.select_related("study").get(patient_id=DEMO_PATIENT[0])
    assert report.state == Report.State.FINAL
    assert report.institution.slug == "riverside"
    assert report.author.username == "rad@riverside"
    assert all(r.valid for r in signing.verify_report(report))
    version = report.versions.get()
    assert version.key_images and version.signer.username == "rad@riverside"
    assert ReadingTask.objects.get(study=report.study).state == ReadingTask.State.FINAL
    assert Order.objects.get(study=report.study).state == Order.State.COMPLETED
    assert Study.objects.get(pk=report.study_id).state == Study.State.REPORTED
    assert Instance.objects.filter(series__study=report.study, sop_class_uid=exports.ENCAPSULATED_PDF_STORAGE).exists()
    assert ReportTemplate.objects.filter(institution__slug="riverside", name="CT chest").exists()
    # Seeding again changes nothing.
    import_string("reports.demo.seed")()
    assert Report.objects.filter(patient_id=DEMO_PATIENT[0]).count() == 1
    assert report.versions.count() == 1
