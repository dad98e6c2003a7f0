"""A report archived with its study (Encapsulated PDF, modality DOC) is the report, not an image of the study."""

from __future__ import annotations

import subprocess

import pytest

from archive.models import Study
from reports import actions
from reports.models import ReportExport, ReportVersion
from reports.pdf import render_pdf

from .conftest import write_and_sign


def pdf_text(data: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    return " ".join(out.split())


@pytest.mark.poppler
def test_the_archived_report_is_counted_apart_and_never_named_as_a_modality(reading, tmp_path):
    _, version = write_and_sign(reading)
    assert actions.do_run_export(ReportExport.objects.get(version=version, target=ReportExport.Target.DICOM))
    study = Study.objects.get(pk=reading.study.pk)
    assert study.modalities == "CT\\DOC"  # DICOM's Modalities in Study says what is stored
    assert (study.image_series, study.image_instances, study.image_modalities) == (1, 1, ["CT"])
    assert study.has_report_document
    # The report printed again (an amendment, a download) names the exam's modality only.
    text = pdf_text(render_pdf(ReportVersion.objects.get(pk=version.pk)), tmp_path)
    assert "Modality CT" in text and "DOC" not in text
