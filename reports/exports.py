"""What a signed version becomes outside the product.

* a DICOM Encapsulated PDF (PS3.3 A.45.1) stored with the study through the
  archive's one ingest service, so any PACS viewer shows the report;
* a FHIR R4 DiagnosticReport (validated with ``fhir.resources``' R4B models,
  whose DiagnosticReport is R4's);
* an HL7 v2.5.1 ORU^R01 message (observation results), sent over MLLP.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
from typing import Any
from uuid import UUID

import pydicom
from django.conf import settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from archive.ingest import IngestSession, Source, store_part10
from pacs_cloud.lib.person_names import display_name

from .models import Report, ReportVersion
from .pdf import render_pdf

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
# LOINC 18748-4 "Diagnostic imaging study" titles the document (PS3.16 CID 7001 uses LOINC report titles).
REPORT_TITLE_CODE = ("18748-4", "LN", "Diagnostic imaging study")


def uid_of(value: UUID | str) -> str:
    """A DICOM UID for one of our UUIDs (the 2.25 root, PS3.5 B.2)."""
    return f"2.25.{UUID(str(value)).int}"


def _da(value: dt.datetime) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: dt.datetime) -> str:
    return value.strftime("%H%M%S")


def encapsulated_pdf(version: ReportVersion, pdf: bytes) -> Dataset:
    """The Encapsulated PDF data set of ``version``, in the study of the report with the study's patient."""
    report = version.report
    study = report.study
    patient = study.received_patient or {}
    ds = Dataset()
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = uid_of(version.pk)
    ds.SpecificCharacterSet = "ISO_IR 192"
    # Patient and General Study: as the study was first received, so ingest recognises the patient.
    ds.PatientName = patient.get("PatientName", study.patient.name)
    ds.PatientID = patient.get("PatientID", study.patient.patient_id)
    ds.IssuerOfPatientID = patient.get("IssuerOfPatientID", study.patient.issuer)
    ds.PatientBirthDate = patient.get("PatientBirthDate", "")
    ds.PatientSex = patient.get("PatientSex", "")
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    ds.StudyTime = study.study_time.strftime("%H%M%S") if study.study_time else ""
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id
    # Encapsulated Document Series and Instance.
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = uid_of(report.pk)
    ds.SeriesNumber = 9900
    ds.SeriesDescription = "Radiology report"
    ds.InstanceNumber = version.number
    ds.Manufacturer = "Cloud PACS"
    signed = version.signed_at.astimezone(dt.UTC)
    ds.ContentDate, ds.ContentTime = _da(signed), _tm(signed)
    ds.AcquisitionDateTime = signed.strftime("%Y%m%d%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = f"Radiology report v{version.number} ({version.kind})"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = REPORT_TITLE_CODE
    ds.ConceptNameCodeSequence = [code]
    ds.VerificationFlag = "VERIFIED" if version.kind != "preliminary" else "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def store_in_archive(version: ReportVersion, pdf: bytes | None = None) -> str:
    """Archive the version's Encapsulated PDF with its study; returns its SOP Instance UID.

    Idempotent: the same version always makes the same object (same UID,
    same bytes), which ingest accepts again without a second copy.
    """
    import io

    report = version.report
    ds = encapsulated_pdf(version, pdf if pdf is not None else render_pdf(version))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    session = IngestSession(source=Source(via="report", label="reports", actor=version.signer))
    result = store_part10(buffer.getvalue(), institution=report.institution, session=session)
    return result.instance.sop_instance_uid


# FHIR R4 ---------------------------------------------------------------------------------

_FHIR_STATUS = {"preliminary": "preliminary", "final": "final", "addendum": "appended", "amendment": "amended"}


def diagnostic_report(version: ReportVersion, *, base_url: str = "") -> dict[str, Any]:
    """The version as a FHIR R4 DiagnosticReport (JSON), validated before it is returned."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    report = version.report
    study = report.study
    patient = study.patient
    content = version.content
    conclusion = content.get("impression", "")
    text = "\n\n".join(
        f"{title}:\n{content[key]}"
        for key, title in (
            ("technique", "Technique"),
            ("findings", "Findings"),
            ("impression", "Impression"),
            ("addendum", "Addenda"),
        )
        if content.get(key, "").strip()
    )
    resource = {
        "resourceType": "DiagnosticReport",
        "id": str(version.pk),
        "identifier": [
            {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{version.pk}"},
            {"system": "urn:cloud-pacs:verification-code", "value": version.verification_code},
        ],
        "basedOn": [],
        "status": _FHIR_STATUS.get(version.kind, "final"),
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": REPORT_TITLE_CODE[0], "display": REPORT_TITLE_CODE[2]}],
            "text": study.description or "Imaging report",
        },
        "subject": {
            "identifier": {
                "system": f"urn:cloud-pacs:patient-id:{patient.issuer or report.institution.slug}",
                "value": patient.patient_id,
            },
            "display": display_name(patient.name),
        },
        "issued": version.signed_at.astimezone(dt.UTC).isoformat(),
        "performer": [{"display": report.institution.name}],
        "resultsInterpreter": [{"display": version.signer_name}],
        "imagingStudy": [
            {
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"},
                "display": study.description or study.accession_number,
            }
        ],
        "conclusion": conclusion,
        "presentedForm": [
            {
                "contentType": "text/plain",
                "language": "en",
                "data": base64.b64encode(text.encode()).decode(),
                "title": f"Report version {version.number}",
            },
            {
                "contentType": "application/pdf",
                "url": f"{base_url}/api/v1/reports/{report.pk}/pdf/?version={version.number}",
                "title": "Report (PDF)",
            },
        ],
    }
    if study.study_date:
        resource["effectiveDateTime"] = study.study_date.isoformat()
    if study.accession_number:
        resource["identifier"].append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": study.accession_number,
            }
        )
    if not resource["basedOn"]:
        del resource["basedOn"]
    # Validation: raises on anything R4 does not allow.
    return DiagnosticReport.model_validate(resource).model_dump(mode="json", exclude_none=True)


# HL7 v2 ------------------------------------------------------------------------------------

MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
_HL7_STATUS = {"preliminary": "P", "final": "F", "addendum": "C", "amendment": "C"}


def _hl7_escape(text: str) -> str:
    """HL7 v2 escape sequences (2.7) for the delimiters ``|^~\\&``."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("~", "\\R\\")
        .replace("&", "\\T\\")
    )


def _hl7_name(pn: str) -> str:
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    return "^".join(_hl7_escape(p) for p in parts).rstrip("^")


def oru_message(version: ReportVersion, *, control_id: str, now: dt.datetime | None = None) -> str:
    """An ORU^R01 (v2.5.1) with one OBX per line of each section; segments end in CR."""
    report: Report = version.report
    study = report.study
    patient = study.patient
    now = now or dt.datetime.now(dt.UTC)
    status = _HL7_STATUS.get(version.kind, "F")
    ts = version.signed_at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S")
    facility = _hl7_escape(report.institution.slug.upper())
    segments = [
        f"MSH|^~\\&|CLOUDPACS|{facility}|RIS|{facility}|{now:%Y%m%d%H%M%S}||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        (
            f"PID|1||{_hl7_escape(patient.patient_id)}^^^{_hl7_escape(patient.issuer)}||{_hl7_name(patient.name)}||"
            f"{patient.birth_date.strftime('%Y%m%d') if patient.birth_date else ''}|{_hl7_escape(patient.sex[:1])}"
        ),
        (
            f"OBR|1|{_hl7_escape(study.accession_number)}|{_hl7_escape(study.accession_number)}|"
            f"{REPORT_TITLE_CODE[0]}^{_hl7_escape(study.description or REPORT_TITLE_CODE[2])}^LN|||"
            f"{study.study_date.strftime('%Y%m%d') if study.study_date else ''}|||||||||"
            f"{_hl7_name(study.referring_physician)}||||||{ts}|||{status}||||||"
            f"{_hl7_escape(version.signer_name)}"
        ),
    ]
    n = 0
    for key, title in (
        ("technique", "TECHNIQUE"),
        ("findings", "FINDINGS"),
        ("impression", "IMPRESSION"),
        ("addendum", "ADDENDA"),
    ):
        text = version.content.get(key, "")
        if not text.strip():
            continue
        for line in [f"{title}:", *text.splitlines()]:
            n += 1
            segments.append(f"OBX|{n}|TX|{REPORT_TITLE_CODE[0]}^{title}^LN||{_hl7_escape(line)}||||||{status}|||{ts}")
    n += 1
    segments.append(f"OBX|{n}|ST|SIGNATURE^Verification code^L||{version.verification_code}||||||{status}|||{ts}")
    return "\r".join(segments) + "\r"


class Hl7SendError(Exception):
    pass


def send_mllp(message: str, *, host: str, port: int, timeout: float) -> str:
    """Send one message framed by MLLP and return the ACK's MSA-1 (AA/CA); raises on anything else."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(MLLP_START + message.encode("utf-8") + MLLP_END)
        reply = b""
        while MLLP_END not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    text = reply.strip(MLLP_START + MLLP_END + b"\r\n").decode("utf-8", "replace")
    msa = next((seg for seg in text.split("\r") if seg.startswith("MSA|")), "")
    code = msa.split("|")[1] if msa.count("|") >= 1 else ""
    if code not in ("AA", "CA"):
        raise Hl7SendError(f"the interface did not accept the message: {msa or text[:200] or 'no reply'}")
    return code


def outbound_address() -> tuple[str, int]:
    host, _, port = settings.REPORTS_HL7_OUTBOUND.rpartition(":")
    return host or "127.0.0.1", int(port)
