"""Outputs of a signed report: PDF, DICOM Encapsulated PDF in the archive, FHIR R4, HL7 v2 ORU^R01 over MLLP."""

from __future__ import annotations

import socket
import subprocess
import threading

import hl7
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from archive.models import Instance
from archive.storage import get_storage
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import AuditEvent
from reports import actions, exports, tasks
from reports.models import ReportExport
from tests.conftest import api_client

from .conftest import make_reading, write_and_sign


def pdf_text(data: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


@pytest.mark.poppler
def test_the_pdf_holds_the_findings_the_header_and_the_signature(reading, tmp_path):
    report, version = write_and_sign(reading)
    response = api_client(reading.tenant.clinician).get(f"/api/v1/reports/{report.pk}/pdf/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    text = " ".join(pdf_text(response.content, tmp_path).split())
    assert "A 6 mm nodule in the right upper lobe." in text
    assert "Indeterminate nodule; CT follow-up in 6 months." in text
    assert reading.study.institution.name in text
    assert version.verification_code in text
    assert version.signer_name in text
    assert "Key images" in text  # the key image was rendered and embedded
    assert b"/Subtype /Image" in response.content or b"/Subtype/Image" in response.content


@pytest.mark.poppler
def test_the_encapsulated_pdf_is_archived_with_the_study(reading, tmp_path):
    report, version = write_and_sign(reading)
    row = ReportExport.objects.get(version=version, target=ReportExport.Target.DICOM)
    assert actions.do_run_export(row)
    row.refresh_from_db()
    assert row.state == ReportExport.State.DONE
    instance = Instance.objects.select_related("series__study").get(sop_instance_uid=row.result)
    assert row.result == version.dicom_sop_instance_uid
    assert instance.series.study_id == reading.study.pk
    assert instance.sop_class_uid == exports.ENCAPSULATED_PDF_STORAGE
    with get_storage().open(instance.storage_key) as handle:
        ds = pydicom.dcmread(handle)
    assert ds.SOPClassUID == exports.ENCAPSULATED_PDF_STORAGE
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.PatientID == reading.study.patient.patient_id
    assert ds.StudyInstanceUID == reading.study.study_instance_uid
    document = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert document.startswith(b"%PDF")
    assert "A 6 mm nodule" in pdf_text(document, tmp_path)
    # Running the export again (a redelivered task) changes nothing.
    assert tasks.export_report_version(str(version.pk)) == 0
    assert (
        Instance.objects.filter(series__study=reading.study, sop_class_uid=exports.ENCAPSULATED_PDF_STORAGE).count()
        == 1
    )


@pytest.mark.poppler
@pytest.mark.django_db(transaction=True)
def test_the_encapsulated_pdf_is_retrieved_by_wado_rs(live_url, tenants, tmp_path):
    reading = make_reading(tenants.a)
    _, version = write_and_sign(reading)
    tasks.export_report_version(str(version.pk))
    uid = exports.uid_of(version.pk)
    _, key = issue_token(tenants.a.clinician, name="test")
    client = DICOMwebClient(url=f"{live_url}/dicomweb", headers={"Authorization": f"Bearer {key}"})
    found = client.search_for_instances(study_instance_uid=reading.study.study_instance_uid)
    assert uid in {item["00080018"]["Value"][0] for item in found}
    ds = client.retrieve_instance(reading.study.study_instance_uid, exports.uid_of(version.report_id), uid)
    assert ds.SOPClassUID == exports.ENCAPSULATED_PDF_STORAGE
    document = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert "A 6 mm nodule" in pdf_text(document, tmp_path)
    # An outsider gets nothing.
    _, other = issue_token(tenants.c.clinician, name="test")
    outsider = DICOMwebClient(url=f"{live_url}/dicomweb", headers={"Authorization": f"Bearer {other}"})
    with pytest.raises(requests.HTTPError) as refused:
        outsider.search_for_instances(study_instance_uid=reading.study.study_instance_uid)
    assert refused.value.response.status_code == 404


def test_the_fhir_diagnostic_report_validates(reading):
    report, version = write_and_sign(reading)
    response = api_client(reading.tenant.clinician).get(f"/api/v1/reports/{report.pk}/fhir/")
    assert response.status_code == 200
    body = response.json()
    resource = DiagnosticReport.model_validate(body)
    assert resource.status == "final"
    assert resource.conclusion == "Indeterminate nodule; CT follow-up in 6 months."
    assert body["subject"]["identifier"]["value"] == reading.study.patient.patient_id
    assert any(i["value"] == version.verification_code for i in body["identifier"])


class MllpListener:
    """A real HL7 interface: accepts MLLP connections, keeps each message, answers an ACK."""

    def __init__(self, ack: str = "AA") -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.ack = ack
        self.messages: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while exports.MLLP_END not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                text = data.strip(exports.MLLP_START + exports.MLLP_END).decode()
                self.messages.append(text)
                control = hl7.parse(text).segment("MSH")[10]
                ack = f"MSH|^~\\&|RIS|X|CLOUDPACS|X|20260101||ACK^R01|A1|P|2.5.1\rMSA|{self.ack}|{control}\r"
                conn.sendall(exports.MLLP_START + ack.encode() + exports.MLLP_END)

    def close(self) -> None:
        self.sock.close()


def test_the_oru_message_reaches_the_interface_and_parses(reading, settings):
    listener = MllpListener()
    settings.REPORTS_HL7_OUTBOUND = f"127.0.0.1:{listener.port}"
    try:
        _, version = write_and_sign(reading)
        row = ReportExport.objects.get(version=version, target=ReportExport.Target.HL7)
        assert actions.do_run_export(row)
    finally:
        listener.close()
    row.refresh_from_db()
    assert row.state == ReportExport.State.DONE
    assert len(listener.messages) == 1
    message = hl7.parse(listener.messages[0])
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(message.segment("MSH")[10]) == row.result
    assert str(message.segment("PID")[3][0][0]) == reading.study.patient.patient_id
    assert str(message.segment("OBR")[3]) == reading.study.accession_number
    assert str(message.segment("OBR")[25]) == "F"
    lines = [str(obx[5]) for obx in message.segments("OBX")]
    assert "A 6 mm nodule in the right upper lobe." in lines
    assert version.verification_code in lines


def test_an_unreachable_interface_is_retried_by_the_sweep(reading, settings):
    listener = MllpListener(ack="AE")
    settings.REPORTS_HL7_OUTBOUND = f"127.0.0.1:{listener.port}"
    try:
        _, version = write_and_sign(reading, findings="Pipe | and caret ^ survive.")
        row = ReportExport.objects.get(version=version, target=ReportExport.Target.HL7)
        assert not actions.do_run_export(row)  # refused with AE
        row.refresh_from_db()
        assert row.state == ReportExport.State.PENDING and row.attempts == 1 and "AE" in row.last_error
        listener.ack = "AA"
        ReportExport.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)
        assert tasks.sweep()["exported"] >= 1
    finally:
        listener.close()
    row.refresh_from_db()
    assert row.state == ReportExport.State.DONE and row.attempts == 2
    attempts = AuditEvent.objects.filter(object_type="report_export", object_id=str(row.pk)).order_by("id")
    assert [(e.action, e.detail["target"], e.detail["attempts"]) for e in attempts] == [
        ("report_export.retry", "pending", 1),
        ("report_export.done", "done", 2),
    ]
    message = hl7.parse(listener.messages[-1])
    assert "Pipe | and caret ^ survive." in [
        str(o[5]).replace("\\F\\", "|").replace("\\S\\", "^") for o in message.segments("OBX")
    ]
