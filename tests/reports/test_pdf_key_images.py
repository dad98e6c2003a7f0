"""The printed report names its key images as the viewer does: by series and image number."""

from __future__ import annotations

import subprocess

import pytest

from archive.models import Instance, Series
from reports import actions
from reports.pdf import render_pdf
from tests.conftest import PASSWORD

from .conftest import Reading


def pdf_text(data: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def sign_with_key_image(reading: Reading, note: str):
    user = reading.tenant.radiologist
    report, _ = actions.do_create_report(reading.study, acting_user=user, template=reading.template)
    content = {
        **report.draft,
        "findings": "A 6 mm nodule in the right upper lobe.",
        "key_images": [{"instance": str(reading.instance.pk), "frame": 1, "note": note}],
    }
    report = actions.do_autosave_draft(report, acting_user=user, content=content, base_revision=report.draft_revision)
    return actions.do_sign_report(report, acting_user=user, password=PASSWORD)


@pytest.fixture
def numbered(reading):
    Series.objects.filter(pk=reading.instance.series_id).update(series_number=2)
    Instance.objects.filter(pk=reading.instance.pk).update(instance_number=14)
    return reading


@pytest.mark.poppler
def test_a_key_image_without_a_note_is_captioned_by_series_and_image(numbered, tmp_path):
    text = pdf_text(render_pdf(sign_with_key_image(numbered, note="")), tmp_path)
    assert "Series 2 · Image 14" in text
    assert "Frame 1" not in text


@pytest.mark.poppler
def test_a_key_image_note_is_its_caption(numbered, tmp_path):
    text = pdf_text(render_pdf(sign_with_key_image(numbered, note="右肺结节")), tmp_path)
    assert "右肺结节" in text
    assert "Series 2" not in text
