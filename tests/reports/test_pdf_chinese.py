"""A report written in Chinese prints in Chinese: in the PDF and in the Encapsulated PDF archived with the study."""

from __future__ import annotations

import subprocess
from zoneinfo import ZoneInfo

import pydicom
import pytest
from django.core.checks import run_checks

from archive.models import Instance
from archive.storage import get_storage
from reports import actions
from reports.models import ReportExport
from tests.conftest import api_client

from .conftest import make_reading, write_and_sign

FINDINGS = "右肺上叶见结节"
PATIENT = "ZHANG^SAN=张^三"


def pdf_text(data: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def pdf_fonts(data: bytes, tmp_path) -> list[list[str]]:
    """``pdffonts`` rows: name, type, encoding, emb, sub, uni, object, generation."""
    path = tmp_path / "fonts.pdf"
    path.write_bytes(data)
    out = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines()[2:] if line.strip()]


@pytest.fixture
def chinese_reading(tenants):
    return make_reading(tenants.a, patient_name=PATIENT)


def assert_prints_chinese(document: bytes, tmp_path) -> None:
    text = pdf_text(document, tmp_path)
    assert FINDINGS in text
    assert "张三 (ZHANG, SAN)" in text
    assert "^" not in text
    embedded = [row for row in pdf_fonts(document, tmp_path) if "ReportCJK" in row[0] or "WenQuanYi" in row[0]]
    assert embedded, pdf_fonts(document, tmp_path)
    assert all(row[-5] == "yes" for row in embedded)  # the "emb" column: the font travels with the PDF


@pytest.mark.poppler
def test_the_pdf_prints_chinese_findings_and_the_ideographic_name(chinese_reading, tmp_path):
    report, _ = write_and_sign(chinese_reading, findings=FINDINGS)
    response = api_client(chinese_reading.tenant.clinician).get(f"/api/v1/reports/{report.pk}/pdf/")
    assert response.status_code == 200
    assert_prints_chinese(response.content, tmp_path)
    # Latin text stays in Helvetica.
    assert any(row[0] == "Helvetica" for row in pdf_fonts(response.content, tmp_path))


@pytest.mark.poppler
def test_the_archived_encapsulated_pdf_prints_chinese(chinese_reading, tmp_path):
    _, version = write_and_sign(chinese_reading, findings=FINDINGS)
    row = ReportExport.objects.get(version=version, target=ReportExport.Target.DICOM)
    assert actions.do_run_export(row)
    instance = Instance.objects.get(sop_instance_uid=version.dicom_sop_instance_uid)
    with get_storage().open(instance.storage_key) as handle:
        ds = pydicom.dcmread(handle)
    assert str(ds.PatientName) == PATIENT
    document = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert_prints_chinese(document, tmp_path)


@pytest.mark.poppler
def test_the_signature_time_is_in_the_institution_time_zone(chinese_reading, tmp_path):
    chinese_reading.tenant.institution.time_zone = "Asia/Shanghai"
    chinese_reading.tenant.institution.save(update_fields=["time_zone"])
    report, version = write_and_sign(chinese_reading, findings=FINDINGS)
    response = api_client(chinese_reading.tenant.clinician).get(f"/api/v1/reports/{report.pk}/pdf/")
    local = version.signed_at.astimezone(ZoneInfo("Asia/Shanghai"))
    assert f"on {local:%Y-%m-%d %H:%M:%S} UTC+8" in " ".join(pdf_text(response.content, tmp_path).split())


def test_a_missing_font_is_a_system_check_warning(settings, tmp_path):
    settings.REPORTS_PDF_CJK_FONT = str(tmp_path / "missing.ttc")
    warnings = [m for m in run_checks() if m.id == "reports.W001"]
    assert len(warnings) == 1
    assert "fonts-wqy-zenhei" in warnings[0].hint


def test_an_unembeddable_font_is_a_system_check_warning(settings, tmp_path):
    not_truetype = tmp_path / "NotoSansCJK.otf"
    not_truetype.write_bytes(b"OTTO" + b"\0" * 64)  # CFF outlines: reportlab cannot embed them
    settings.REPORTS_PDF_CJK_FONT = str(not_truetype)
    assert [m.id for m in run_checks() if m.id.startswith("reports.")] == ["reports.W001"]


def test_the_installed_font_passes_the_check():
    assert [m for m in run_checks() if m.id == "reports.W001"] == []
