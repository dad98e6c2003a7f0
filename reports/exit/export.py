"""Writing an institution's export: the files, the DICOMDIR, the manifest, and where they go.

The layout, under one folder named after the institution::

    DICOM/DICOMDIR                      the File-set's directory (PS3.10 8, PS3.3 F)
    DICOM/PT000000/ST000000/SE000000/IM000000   each archived object, its stored bytes
    reports/<report id>/v<n>-<kind>.pdf         every signed version as the product prints it
    reports/<report id>/v<n>-<kind>.fhir.json   the same as a FHIR R4 Bundle (Patient, ImagingStudy, DiagnosticReport)
    audit.jsonl                         the institution's audit trail, one event a line, hash chain included
    configuration.json                  institution, members, DICOM nodes, catalogue, routing, templates, policies
    manifest.json, MANIFEST.sha256      every other file's size and SHA-256 (``sha256sum -c`` reads the second)

Archived objects are copied byte for byte from storage (already Part-10
files with our File Meta Information): nothing is decoded or re-encoded, so
pixel data stays identical and each object's digest equals the archive's.
The DICOMDIR is built by pydicom's ``FileSet`` from each object's header
alone (read up to the pixel data), in a scratch folder; its records name the
File IDs under which the stored bytes are then written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pydicom
from django.conf import settings
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Count, Sum
from pydicom.dataset import Dataset
from pydicom.uid import UID

from archive.copies.locations import reader
from archive.models import Instance, Study
from pacs_cloud.lib.person_names import display_name, name_groups
from pacs_cloud.models import AuditEvent, Institution, Membership

from ..exports import diagnostic_report
from ..models import Report, ReportVersion
from ..pdf import render_pdf
from .models import ExitJob

FORMAT = "cloud-pacs-export/1"
COPY_BUFFER = 1024 * 1024


class Cancelled(Exception):
    """The job was cancelled or restarted while this run was writing."""


def export_dir() -> Path:
    """Where download archives are kept until fetched (and removed at offboarding)."""
    return Path(settings.EXIT_EXPORT_DIR)


def archive_path(job: ExitJob) -> Path:
    return export_dir() / f"{job.pk}.tar"


# Where the files go -------------------------------------------------------------------


class _Hashing:
    """A read-only stream that digests what is read through it."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


class _HashingWriter:
    """A write-only stream that digests what is written through it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


class Sink(Protocol):
    def add(self, name: str, source: BinaryIO, size: int) -> str:
        """Write ``size`` bytes of ``source`` as ``name``; returns their SHA-256."""

    def close(self) -> None: ...

    def abort(self) -> None: ...


class TarSink:
    """One uncompressed POSIX (pax) tar: DICOM is stored as is, never recompressed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.partial = path.with_suffix(".partial")
        # The tar's own digest is taken as it is written (no second pass over it).
        self.out = _HashingWriter(open(self.partial, "wb"))  # noqa: SIM115 (closed in close/abort)
        self.tar = tarfile.open(fileobj=self.out, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self.tar.copybufsize = COPY_BUFFER
        self.mtime = time.time()

    def add(self, name: str, source: BinaryIO, size: int) -> str:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self.mtime, 0o644
        hashing = _Hashing(source)
        self.tar.addfile(info, hashing)  # type: ignore[arg-type]
        return hashing.digest.hexdigest()

    @property
    def sha256(self) -> str:
        return self.out.digest.hexdigest()

    def close(self) -> None:
        self.tar.close()
        self.out.file.flush()
        os.fsync(self.out.file.fileno())
        self.out.file.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self.tar.close()
        self.out.file.close()
        self.partial.unlink(missing_ok=True)


class S3Sink:
    """Each file as its own object under ``prefix`` in a bucket the administrator names.

    The platform's S3 credentials (``AWS_ACCESS_KEY_ID``...) must be allowed
    to write there (a bucket policy granting the platform's account).
    """

    def __init__(self, bucket: str, prefix: str, endpoint_url: str) -> None:
        from archive.storage import S3Storage

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = S3Storage(
            bucket, endpoint_url=endpoint_url or settings.S3_ENDPOINT_URL, create_bucket=False
        ).client
        self.client.head_bucket(Bucket=bucket)

    def add(self, name: str, source: BinaryIO, size: int) -> str:
        hashing = _Hashing(source)
        # Not seekable on purpose: the transfer manager then reads it once, in order.
        self.client.upload_fileobj(hashing, self.bucket, self.prefix + name)
        return hashing.digest.hexdigest()

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def sink_for(job: ExitJob) -> Sink:
    if job.destination == ExitJob.Destination.S3:
        return S3Sink(job.bucket, job.prefix, job.endpoint_url)
    return TarSink(archive_path(job))


# The export ------------------------------------------------------------------------------


@dataclass
class Progress:
    """Counts the files written and reports them (and learns of a cancel) at most every ``every`` s."""

    report: Callable[[int, int], bool]
    every: float = 0.5
    files: int = 0
    bytes: int = 0
    _last: float = field(default=0.0)

    def add(self, size: int, *, force: bool = False) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            if not self.report(self.files, self.bytes):
                raise Cancelled


@dataclass
class Written:
    files: list[dict[str, Any]]
    manifest_sha256: str
    not_in_dicomdir: list[str]


def totals(institution_id: Any) -> tuple[int, int]:
    """Files and bytes an export of the institution will write (the progress bar's scale)."""
    instances = Instance.objects.filter(institution_id=institution_id)
    found = instances.aggregate(count=Count("pk"), size=Sum("size"))
    count, size = found["count"], found["size"] or 0
    versions = ReportVersion.objects.filter(report__institution_id=institution_id).count()
    return count + 1 + 2 * versions + 4, size


def write_export(job: ExitJob, sink: Sink, progress: Progress) -> Written:
    """Write everything of ``job``'s institution to ``sink``; returns what was written.

    Raises :class:`Cancelled` when ``progress`` learns the job was cancelled.
    """
    institution = Institution.objects.get(pk=job.institution_id)
    root = f"{institution.slug}-export"
    files: list[dict[str, Any]] = []

    def add(name: str, source: BinaryIO, size: int) -> None:
        digest = sink.add(f"{root}/{name}", source, size)
        files.append({"path": name, "size": size, "sha256": digest})
        progress.add(size)

    def add_bytes(name: str, data: bytes) -> None:
        add(name, io.BytesIO(data), len(data))

    dicomdir, file_ids, skipped = build_dicomdir(institution)
    add_bytes("DICOM/DICOMDIR", dicomdir)
    read = reader()
    for instance in _instances(institution):
        name = f"DICOM/{file_ids[instance.pk]}"
        with read.open(instance.storage_key) as handle:
            add(name, handle, instance.size)
        if files[-1]["sha256"] != instance.sha256:
            raise OSError(f"stored object {instance.storage_key} does not match its digest")
    for version in _versions(institution):
        stem = f"reports/{version.report_id}/v{version.number}-{version.kind}"
        add_bytes(f"{stem}.pdf", render_pdf(version))
        add_bytes(f"{stem}.fhir.json", _json(fhir_bundle(version)))
    with tempfile.TemporaryFile() as trail:
        size = write_audit_trail(institution.pk, trail)
        trail.seek(0)
        add("audit.jsonl", trail, size)  # type: ignore[arg-type]
    add_bytes("configuration.json", _json(configuration(institution)))
    manifest = {
        "format": FORMAT,
        "institution": {"id": str(institution.pk), "slug": institution.slug, "name": institution.name},
        "export": str(job.pk),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "files": files,
        "not_in_dicomdir": skipped,
    }
    manifest_bytes = _json(manifest)
    sums = "".join(f"{f['sha256']}  {f['path']}\n" for f in files).encode()
    add_bytes("MANIFEST.sha256", sums)
    sink.add(f"{root}/manifest.json", io.BytesIO(manifest_bytes), len(manifest_bytes))
    progress.add(len(manifest_bytes), force=True)
    return Written(files, hashlib.sha256(manifest_bytes).hexdigest(), skipped)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=1, cls=DjangoJSONEncoder).encode()


def _instances(institution: Institution) -> Iterator[Instance]:
    return (
        Instance.objects.filter(institution=institution)
        .only("pk", "storage_key", "size", "sha256", "sop_instance_uid")
        .order_by("series__study__study_instance_uid", "series__series_number", "series_id", "instance_number", "pk")
        .iterator(chunk_size=2000)
    )


def _versions(institution: Institution) -> Iterator[ReportVersion]:
    return (
        ReportVersion.objects.filter(report__institution=institution)
        .select_related("report__study__patient", "report__institution", "signer", "signing_key")
        .order_by("report__created_at", "report_id", "number")
        .iterator(chunk_size=100)
    )


# DICOMDIR (PS3.10 section 8, PS3.3 Annex F) ---------------------------------------------

MEDIA_STORAGE_DIRECTORY = UID("1.2.840.10008.1.3.10")
_ISO_IR_192 = "ISO_IR 192"  # the index keeps decoded Unicode: records carry it as UTF-8


def _record(kind: str, **values: Any) -> Dataset:
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    for keyword, value in values.items():
        setattr(record, keyword, value)
    return record


@dataclass
class _Node:
    record: Dataset
    name: str = ""  # the File ID component of the level (PS3.10 8.5: up to 8 characters)
    children: list[_Node] = field(default_factory=list)


def build_dicomdir(institution: Institution) -> tuple[bytes, dict[Any, str], list[str]]:
    """The DICOMDIR of every archived object, and each object's File ID path (``PT.../ST.../SE.../IM...``).

    Patient, study and series records come from the index; an image's record
    (PS3.3 F.5.18) from its index row too; any other object's record is made
    by pydicom's recorder for its type from the object's stored header. An
    object pydicom has no record for is exported without one (its SOP
    Instance UID is returned; the manifest lists it).
    """
    from pydicom.fileset import DIRECTORY_RECORDERS, _four_level_record_type

    rows = (
        Instance.objects.filter(institution=institution)
        .order_by(
            "series__study__patient_id",
            "series__study__study_instance_uid",
            "series__series_number",
            "series_id",
            "instance_number",
            "pk",
        )
        .values_list(
            "pk",
            "storage_key",
            "sop_instance_uid",
            "sop_class_uid",
            "transfer_syntax_uid",
            "instance_number",
            "rows",
            "series_id",
            "series__series_instance_uid",
            "series__modality",
            "series__series_number",
            "series__study_id",
            "series__study__study_instance_uid",
            "series__study__study_date",
            "series__study__study_time",
            "series__study__description",
            "series__study__study_id",
            "series__study__accession_number",
            "series__study__patient_id",
            "series__study__patient__patient_id",
            "series__study__patient__name",
        )
    )
    roots: list[_Node] = []
    patients: dict[Any, _Node] = {}
    studies: dict[Any, _Node] = {}
    series: dict[Any, _Node] = {}
    file_ids: dict[Any, str] = {}
    skipped: list[str] = []
    read = reader()
    for (
        pk,
        key,
        sop,
        sop_class,
        syntax,
        number,
        image_rows,
        series_pk,
        series_uid,
        modality,
        series_number,
        study_pk,
        study_uid,
        study_date,
        study_time,
        description,
        study_id,
        accession,
        patient_pk,
        patient_id,
        name,
    ) in rows.iterator(chunk_size=5000):
        if patient_pk not in patients:
            patients[patient_pk] = _Node(
                _record(
                    "PATIENT", SpecificCharacterSet=_ISO_IR_192, PatientName=name, PatientID=patient_id or "UNKNOWN"
                ),
                f"PT{len(roots):06d}",
            )
            roots.append(patients[patient_pk])
        patient = patients[patient_pk]
        if study_pk not in studies:
            studies[study_pk] = _Node(
                _record(
                    "STUDY",
                    SpecificCharacterSet=_ISO_IR_192,
                    StudyDate=study_date.strftime("%Y%m%d") if study_date else "19000101",
                    StudyTime=study_time.strftime("%H%M%S") if study_time else "000000",
                    StudyDescription=description,
                    StudyInstanceUID=study_uid,
                    StudyID=study_id,
                    AccessionNumber=accession,
                ),
                f"ST{len(patient.children):06d}",
            )
            patient.children.append(studies[study_pk])
        study = studies[study_pk]
        if series_pk not in series:
            series[series_pk] = _Node(
                _record(
                    "SERIES",
                    Modality=modality or "OT",
                    SeriesInstanceUID=series_uid,
                    SeriesNumber=series_number if series_number is not None else len(study.children) + 1,
                ),
                f"SE{len(study.children):06d}",
            )
            study.children.append(series[series_pk])
        parent = series[series_pk]
        path = (patient.name, study.name, parent.name, f"IM{len(parent.children):06d}")
        references = {
            "ReferencedFileID": list(path),
            "ReferencedSOPClassUIDInFile": sop_class,
            "ReferencedSOPInstanceUIDInFile": sop,
            "ReferencedTransferSyntaxUIDInFile": syntax,
        }
        if image_rows is not None:
            leaf = _record(
                "IMAGE", **references, InstanceNumber=number if number is not None else len(parent.children) + 1
            )
        else:
            with read.open(key) as handle:  # an S3 body cannot seek: read the (small, non-image) object
                header = pydicom.dcmread(io.BytesIO(handle.read()), stop_before_pixels=True)
            try:
                kind = _four_level_record_type(header)
                leaf = DIRECTORY_RECORDERS[kind](header)
            except (ValueError, KeyError, AttributeError):
                skipped.append(sop)
                file_ids[pk] = f"OTHER/{sop}.dcm"
                continue
            leaf = _record(kind, **references, **{e.keyword: e.value for e in leaf if e.keyword})
        parent.children.append(_Node(leaf))
        file_ids[pk] = "/".join(path)
    return _write_dicomdir(institution, roots), file_ids, skipped


def _write_dicomdir(institution: Institution, roots: list[_Node]) -> bytes:
    """Encode the record tree; the offsets (byte positions of items) need a first pass to measure."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    flat: list[_Node] = []

    def visit(nodes: list[_Node]) -> None:
        for node in nodes:
            flat.append(node)
            visit(node.children)

    visit(roots)
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.FileSetID = re.sub(r"[^A-Z0-9_ ]", "_", institution.slug.upper())[:16]
    directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.FileSetConsistencyFlag = 0
    directory.DirectoryRecordSequence = [node.record for node in flat]

    def encode() -> bytes:
        out = io.BytesIO()
        pydicom.dcmwrite(out, directory, enforce_file_format=True)
        return out.getvalue()

    first = encode()
    positions = [item.seq_item_tell for item in pydicom.dcmread(io.BytesIO(first)).DirectoryRecordSequence]
    where = {id(node): positions[i] for i, node in enumerate(flat)}

    def link(nodes: list[_Node]) -> None:
        for i, node in enumerate(nodes):
            node.record.OffsetOfTheNextDirectoryRecord = where[id(nodes[i + 1])] if i + 1 < len(nodes) else 0
            node.record.OffsetOfReferencedLowerLevelDirectoryEntity = (
                where[id(node.children[0])] if node.children else 0
            )
            link(node.children)

    link(roots)
    if roots:
        directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = where[id(roots[0])]
        directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = where[id(roots[-1])]
    final = encode()
    if len(final) != len(first):
        raise ValueError("DICOMDIR offsets changed its length")
    return final


# FHIR R4 -----------------------------------------------------------------------------------


def fhir_bundle(version: ReportVersion) -> dict[str, Any]:
    """A ``collection`` Bundle of the version's DiagnosticReport, its ImagingStudy and Patient, validated."""
    from fhir.resources.R4B.bundle import Bundle

    report: Report = version.report
    study: Study = report.study
    patient = study.patient
    patient_url, study_url, report_url = (f"urn:uuid:{key}" for key in (patient.pk, study.pk, version.pk))
    alphabetic, ideographic, phonetic = name_groups(patient.name)
    names: list[dict[str, Any]] = []
    for group, use in ((alphabetic, "official"), (ideographic, "usual")):
        if group:
            family, _, given = group.partition("^")
            name: dict[str, Any] = {"use": use, "text": display_name(group)}
            if family:
                name["family"] = family
            if given.strip("^"):
                name["given"] = [g for g in given.split("^")[:1] if g]
            names.append(name)
    patient_resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(patient.pk),
        "identifier": [
            {
                "system": f"urn:cloud-pacs:patient-id:{patient.issuer or report.institution.slug}",
                "value": patient.patient_id,
            }
        ],
    }
    if names:
        patient_resource["name"] = names
    if patient.birth_date:
        patient_resource["birthDate"] = patient.birth_date.isoformat()
    gender = {"M": "male", "F": "female", "O": "other"}.get(patient.sex.upper()[:1])
    if gender:
        patient_resource["gender"] = gender
    series = []
    for row in study.series.order_by("series_number", "series_instance_uid"):
        instances = [
            {
                "uid": uid,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"},
                **({"number": number} if number is not None else {}),
            }
            for uid, sop_class, number in row.instances.order_by("instance_number", "sop_instance_uid").values_list(
                "sop_instance_uid", "sop_class_uid", "instance_number"
            )
        ]
        item: dict[str, Any] = {
            "uid": row.series_instance_uid,
            "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": row.modality or "OT"},
            "numberOfInstances": len(instances),
        }
        if row.series_number is not None:
            item["number"] = row.series_number
        if row.description:
            item["description"] = row.description
        if instances:
            item["instance"] = instances
        series.append(item)
    imaging_study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": str(study.pk),
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}],
        "status": "available",
        "subject": {"reference": patient_url},
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s["numberOfInstances"] for s in series),
    }
    if study.accession_number:
        imaging_study["identifier"].append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": study.accession_number,
            }
        )
    if study.description:
        imaging_study["description"] = study.description
    if study.study_date:
        imaging_study["started"] = study.study_date.isoformat()
    if series:
        imaging_study["series"] = series
    diagnostic = diagnostic_report(version)
    diagnostic["subject"] = {"reference": patient_url, "display": diagnostic["subject"].get("display", "")}
    diagnostic["imagingStudy"] = [{"reference": study_url}]
    # The PDF travels beside the Bundle in the export, not behind the product's URL.
    diagnostic["presentedForm"] = [f for f in diagnostic["presentedForm"] if "url" not in f]
    bundle = {
        "resourceType": "Bundle",
        "id": str(version.pk),
        "type": "collection",
        "timestamp": version.signed_at.astimezone(dt.UTC).isoformat(),
        "entry": [
            {"fullUrl": report_url, "resource": diagnostic},
            {"fullUrl": study_url, "resource": imaging_study},
            {"fullUrl": patient_url, "resource": patient_resource},
        ],
    }
    # Validation: raises on anything R4 does not allow.
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)


# Audit trail and configuration ------------------------------------------------------------


def write_audit_trail(institution_id: Any, out: Any) -> int:
    """Every audit event of the institution as JSON Lines (with its hash-chain links); returns bytes written."""
    size = 0
    fields = [f.attname for f in AuditEvent._meta.fields]
    rows = AuditEvent.objects.filter(institution_id=institution_id).order_by("id").values_list(*fields)
    for row in rows.iterator(chunk_size=5000):
        line = json.dumps(dict(zip(fields, row, strict=True)), ensure_ascii=False, cls=DjangoJSONEncoder) + "\n"
        data = line.encode()
        out.write(data)
        size += len(data)
    return size


# Configuration tables (model label → the field naming the institution).
CONFIGURATION = (
    ("archive.ArchivePolicy", "institution"),
    ("archive.DicomNode", "institution"),
    ("archive.EdgeGateway", "institution"),
    ("archive.CopyPolicy", "institution"),
    ("archive.LifecycleRule", "institution"),
    ("archive.PriorRule", "institution"),
    ("archive.BreakGlassAllowance", "institution"),
    ("worklist.Procedure", "institution"),
    ("worklist.Station", "institution"),
    ("workflow.RoutingPolicy", "institution"),
    ("workflow.RadiologistPool", "owner"),
    ("workflow.ReadingAgreement", "hospital"),
    ("reports.ReportTemplate", "institution"),
    ("viewer.HangingProtocol", "institution"),
    ("viewer.AssumedTissueT1", "institution"),
)


def configuration(institution: Institution) -> dict[str, Any]:
    """The institution's settings as JSON: what a new system needs to run it the same way."""
    from django.apps import apps

    result: dict[str, Any] = {
        "format": FORMAT,
        "institution": serializers.serialize("python", [institution])[0]["fields"] | {"id": str(institution.pk)},
        "members": [
            {"username": m.user.username, "name": m.user.display_name, "email": m.user.email, "role": m.role}
            for m in Membership.objects.filter(institution=institution)
            .select_related("user")
            .order_by("user__username")
        ],
        # Demographic corrections apply on retrieval; the exported objects are the bytes as received.
        "header_overrides": dict(
            Study.objects.filter(institution=institution)
            .exclude(header_overrides={})
            .values_list("study_instance_uid", "header_overrides")
        ),
    }
    for label, key in CONFIGURATION:
        try:
            model = apps.get_model(label)
        except LookupError:
            continue
        rows = model._default_manager.filter(**{key: institution}).order_by("pk")
        result[label] = serializers.serialize("python", rows)
    return result
