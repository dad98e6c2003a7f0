"""The Modality Worklist information model (PS3.4 Annex K) over the order tables.

:func:`find_scheduled_steps` answers one C-FIND Identifier for one
institution. It reads only this app's tables (and the patients and nodes
they point to), so the cloud and an edge gateway holding a replica of an
institution's orders answer alike. The DIMSE adapter is in ``dimse.py``.

An order is on the worklist while it is scheduled, arrived or in progress
(Scheduled Procedure Step Status SCHEDULED, ARRIVED, STARTED); completed,
discontinued and cancelled orders have left it.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from django.db.models import Q, QuerySet, Subquery
from pydicom import Dataset
from pydicom.charset import python_encoding

from pacs_cloud.lib import dicom_datetime
from pacs_cloud.lib.dicom_match import (
    check_keys,
    element_text,
    fold_name,
    has_wildcard,
    is_universal,
    record_matches,
    response_identifier,
    texts,
)
from pacs_cloud.models import Institution

from .models import Order, Station

# Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10
SPS_STATUS = {
    Order.State.SCHEDULED: "SCHEDULED",
    Order.State.ARRIVED: "ARRIVED",
    Order.State.IN_PROGRESS: "STARTED",
}
# Requested Procedure Priority (0040,1003), PS3.3 C.4.11
DICOM_PRIORITY = {
    Order.Priority.ROUTINE: "ROUTINE",
    Order.Priority.URGENT: "HIGH",
    Order.Priority.STAT: "STAT",
}
UTF8 = "ISO_IR 192"


def _code(code: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {"CodeValue": code, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning[:64]}


# The columns of an order, and of what it points to, that its worklist item is made of.
RECORD_COLUMNS = (
    "patient__name",
    "patient__patient_id",
    "patient__issuer",
    "patient__birth_date",
    "patient__sex",
    "procedure__code",
    "procedure__coding_scheme",
    "procedure__name",
    "procedure__body_part",
    "procedure__duration_minutes",
    "station__name",
    "station__location",
    "station__node__ae_title",
    "accession_number",
    "requested_procedure_id",
    "sps_id",
    "study_instance_uid",
    "priority",
    "referring_physician",
    "clinical_info",
    "scheduled_date",
    "scheduled_time",
    "modality",
    "state",
)


def order_record(order: Order) -> dict[str, Any]:
    """The worklist item of an order: every attribute we support, keyed by keyword.

    The form is the one :mod:`pacs_cloud.lib.dicom_match` matches and answers
    from. ``order`` must come with its patient, procedure, station and the
    station's node loaded.
    """
    row = {column: functools.reduce(getattr, column.split("__"), order) for column in RECORD_COLUMNS}
    return worklist_record(row, order.institution.name)


def worklist_record(row: Mapping[str, Any], institution_name: str) -> dict[str, Any]:
    """The worklist item of an order read as ``RECORD_COLUMNS`` (see :func:`order_record`)."""
    end = dt.datetime.combine(row["scheduled_date"], row["scheduled_time"]) + dt.timedelta(
        minutes=row["procedure__duration_minutes"]
    )
    protocol = _code(row["procedure__code"], row["procedure__coding_scheme"], row["procedure__name"])
    step = {
        "ScheduledStationAETitle": row["station__node__ae_title"],
        "ScheduledStationName": row["station__name"],
        "ScheduledProcedureStepLocation": row["station__location"],
        "ScheduledProcedureStepStartDate": row["scheduled_date"],
        "ScheduledProcedureStepStartTime": row["scheduled_time"],
        "ScheduledProcedureStepEndDate": end.date(),
        "ScheduledProcedureStepEndTime": end.time(),
        "Modality": row["modality"],
        "ScheduledPerformingPhysicianName": None,
        "ScheduledProcedureStepDescription": row["procedure__name"],
        "ScheduledProtocolCodeSequence": [protocol],
        "ScheduledProcedureStepID": row["sps_id"],
        "ScheduledProcedureStepStatus": SPS_STATUS.get(row["state"], ""),
        "PreMedication": None,
        "RequestedContrastAgent": None,
        "CommentsOnTheScheduledProcedureStep": None,
    }
    return {
        # Patient (PS3.4 K.6-1, Patient Identification and Demographics)
        "PatientName": row["patient__name"],
        "PatientID": row["patient__patient_id"],
        "IssuerOfPatientID": row["patient__issuer"],
        "PatientBirthDate": row["patient__birth_date"],
        "PatientSex": row["patient__sex"],
        "AdditionalPatientHistory": row["clinical_info"],
        "MedicalAlerts": None,
        "Allergies": None,
        "PregnancyStatus": None,
        "PatientWeight": None,
        "PatientSize": None,
        # Imaging Service Request
        "AccessionNumber": row["accession_number"],
        "ReferringPhysicianName": row["referring_physician"],
        "RequestingPhysician": row["referring_physician"],
        "InstitutionName": institution_name[:64],
        # Requested Procedure
        "StudyInstanceUID": row["study_instance_uid"],
        "RequestedProcedureID": row["requested_procedure_id"],
        "RequestedProcedureDescription": row["procedure__name"],
        "RequestedProcedureCodeSequence": [protocol],
        "RequestedProcedurePriority": DICOM_PRIORITY[Order.Priority(row["priority"])],
        "ReasonForTheRequestedProcedure": row["clinical_info"][:64],
        "BodyPartExamined": row["procedure__body_part"],
        "ReferencedStudySequence": [],
        "ReferencedPatientSequence": [],
        # Scheduled Procedure Step
        "ScheduledProcedureStepSequence": [step],
    }


def _exact_values(ds: Dataset, keyword: str) -> list[str] | None:
    """The values of a key usable as an SQL equality filter, or None."""
    element = ds[keyword] if keyword in ds else None
    if element is None or element.VR == "SQ":
        return None
    text = element_text(element)
    if is_universal(text) or has_wildcard(text):
        return None
    return [v.strip() for v in text.split("\\")]


# Keys whose exact values narrow the candidates in SQL (PS3.4 single value and UID list matching).
STEP_LOOKUPS = {
    "ScheduledStationAETitle": "station__node__ae_title__in",
    "Modality": "modality__in",
    "ScheduledProcedureStepID": "sps_id__in",
}
TOP_LOOKUPS = {
    "PatientID": "patient__patient_id__in",
    "AccessionNumber": "accession_number__in",
    "RequestedProcedureID": "requested_procedure_id__in",
    "StudyInstanceUID": "study_instance_uid__in",
}


def _name_prefilter(identifier: Dataset) -> Q | None:
    """A superset filter for a Patient's Name key of one component group.

    The longest literal run of the key must appear in the name as stored, or
    in its folded form (``Patient.name_search``: upper case, accent-free).
    """
    if "PatientName" not in identifier:
        return None
    key = element_text(identifier["PatientName"])
    if is_universal(key) or "=" in key or "\\" in key:
        return None
    chunk = max(re.split(r"[*?]", key), key=len).strip()
    folded = fold_name(chunk).upper()
    if len(chunk) < 2 or not folded:
        return None
    return (
        Q(patient__name_search__contains=folded)
        | Q(patient__name__icontains=chunk)
        | Q(patient__name__icontains=folded)
    )


def candidate_orders(identifier: Dataset, institution: Institution) -> QuerySet[Order]:
    """Orders that may match: a superset narrowed in SQL by the exact keys.

    Only equality, list and date-range keys narrow here; wild cards, names
    and times are left to :func:`record_matches`, which decides.
    """
    # Every condition applied at once: each QuerySet.filter() clones the query.
    conditions = [Q(institution=institution), Q(state__in=Order.WORKLIST_STATES)]
    sps_seq = identifier.get("ScheduledProcedureStepSequence")
    step = sps_seq[0] if sps_seq else None
    keyed: list[tuple[Dataset, dict[str, str]]] = [(identifier, TOP_LOOKUPS)]
    if step is not None:
        keyed.append((step, STEP_LOOKUPS))
    for ds, lookups in keyed:
        for keyword, lookup in lookups.items():
            if values := _exact_values(ds, keyword):
                conditions.append(Q(**{lookup: values}))
    if step is not None:
        if values := _exact_values(step, "ScheduledProcedureStepStatus"):
            conditions.append(Q(state__in=[s for s, text in SPS_STATUS.items() if text in values]))
        date_key = "ScheduledProcedureStepStartDate"
        date_text = element_text(step[date_key]) if date_key in step else ""
        if not is_universal(date_text):
            low, high = dicom_datetime.parse_da_range(date_text)
            if low:
                conditions.append(Q(scheduled_date__gte=low))
            if high:
                conditions.append(Q(scheduled_date__lte=high))
    if name_filter := _name_prefilter(identifier):
        conditions.append(name_filter)
    return (
        Order.objects.filter(*conditions)
        .select_related("patient", "procedure", "station__node")
        .order_by("scheduled_at", "accession_number")
    )


def _encodable(record: dict[str, Any], character_set: str) -> bool:
    codec = python_encoding.get(character_set)
    if codec is None:
        return False
    try:
        for text in texts(record):
            text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def requested_character_set(identifier: Dataset) -> str:
    value = identifier.get("SpecificCharacterSet")
    if not value:
        return ""
    values = [v.strip() for v in (value if isinstance(value, list | tuple) else [value]) if v]
    # Only a single, non-ISO-2022 set is answered in kind; others get UTF-8.
    return values[0] if len(values) == 1 else UTF8


def answer_character_set(record: dict[str, Any], *, requested: str, preferred: str = "") -> str | None:
    """The Specific Character Set of one response (PS3.4 C.4.1.1.3.2).

    The station's configured set wins, then the one the query used; a value
    they cannot encode falls back to UTF-8 rather than to replacement
    characters. None (the default repertoire) when everything is ASCII and
    nothing else was asked for.
    """
    for candidate in (preferred, requested):
        if candidate:
            return candidate if _encodable(record, candidate) else UTF8
    return None if all(text.isascii() for text in texts(record)) else UTF8


def find_scheduled_steps(
    identifier: Dataset, institution: Institution, *, character_set: str = ""
) -> Iterator[Dataset]:
    """Yield a response Identifier for every worklist item of ``institution``
    that matches ``identifier`` (PS3.4 K.4.1.3.1), earliest first.

    ``character_set`` is the calling station's preferred Specific Character
    Set (blank: as the query asks). Raises
    :class:`pacs_cloud.lib.dicom_match.InvalidKey` for a malformed key.
    """
    for record, charset in scheduled_step_records(identifier, institution, character_set=character_set):
        yield response_identifier(identifier, record, character_set=charset)


def scheduled_step_records(
    identifier: Dataset, institution: Institution, *, character_set: str = "", calling_node: Any = None
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """The worklist items :func:`find_scheduled_steps` answers with, each with
    the Specific Character Set to answer it in.

    With ``calling_node`` (the querying ``DicomNode``), the character set
    configured for its station is preferred, read in the same query.
    """
    check_keys(identifier)
    requested = requested_character_set(identifier)
    rows = candidate_orders(identifier, institution)
    columns = list(RECORD_COLUMNS)
    if calling_node is not None:
        station = Station.objects.filter(node=calling_node).values("character_set")[:1]
        rows = rows.annotate(calling_character_set=Subquery(station))
        columns.append("calling_character_set")
    for row in rows.values(*columns):
        record = worklist_record(row, institution.name)
        if record_matches(identifier, record):
            preferred = row.get("calling_character_set") or character_set
            yield record, answer_character_set(record, requested=requested, preferred=preferred)
