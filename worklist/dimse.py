"""The worklist's DICOM services: Modality Worklist C-FIND and MPPS N-CREATE/N-SET.

Thin adapters from pynetdicom events to :func:`worklist.mwl.find_scheduled_steps`
and the MPPS actions; the calling AE (a configured ``DicomNode``) decides the
institution, so a modality sees and changes only its own institution's exams.
Served by ``manage.py dicom_server`` in the cloud, and by an edge gateway.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from archive.dimse import DimseService, calling_node, record_response, when_association_ends
from pacs_cloud import audit
from pacs_cloud.lib.dicom_match import InvalidKey, element_text, is_universal
from pacs_cloud.lib.uids import new_uid

from . import actions, mwl

log = logging.getLogger(__name__)

# C-FIND statuses (PS3.4 K.4.1.1.4, PS3.7 C)
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCELLED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
SUCCESS = 0x0000


def _failure(status: int, comment: str, offending: list[int] | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    if offending:
        ds.OffendingElement = offending
    return ds


def unsupported_keys(identifier: Dataset, record: dict[str, Any]) -> list[str]:
    """Non-universal keys the worklist cannot match on (they are only returned)."""
    missing = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in ("SpecificCharacterSet",) or element.tag.group == 0:
            continue
        if element.VR == "SQ":
            items = element.value or []
            nested = record.get(keyword)
            if items and keyword in record and isinstance(nested, list) and nested:
                missing += [f"{keyword}>{k}" for k in unsupported_keys(items[0], nested[0])]
            elif items and len(items[0]) and keyword not in record:
                missing.append(keyword)
        elif keyword not in record and not is_universal(element_text(element)):
            missing.append(keyword)
    return missing


def handle_mwl_find(event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND for Modality Worklist Information Model – FIND."""
    node = calling_node(event.assoc)
    if node is None:
        yield _failure(UNABLE_TO_PROCESS, "calling AE is not configured"), None
        return
    try:
        identifier = event.identifier
    except Exception as exc:
        yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"unreadable identifier: {exc}"), None
        return
    count = 0
    status = PENDING
    try:
        for record, charset in mwl.scheduled_step_records(identifier, node.institution, calling_node=node):
            if event.is_cancelled:
                yield CANCELLED, None
                return
            if count == 0 and unsupported_keys(identifier, record):
                status = PENDING_OPTIONAL_KEYS_UNSUPPORTED
            count += 1
            yield status, record_response(identifier, record, character_set=charset)
    except InvalidKey as exc:
        yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
        return
    # Recorded once the association ends: the modality does not wait for it.
    when_association_ends(
        event.assoc,
        functools.partial(
            audit.record,
            "worklist.mwl.query",
            actor_label=f"AE {node.ae_title}",
            institution=node.institution,
            address=event.assoc.requestor.address,
            detail={"matches": count},
        ),
    )


def _mpps_status(exc: actions.MppsError, *, with_tags: bool) -> Dataset:
    ds = Dataset()
    ds.Status = exc.status
    ds.ErrorComment = exc.comment
    if exc.error_id is not None:
        ds.ErrorID = exc.error_id
    if with_tags and exc.tags:
        ds.AttributeIdentifierList = exc.tags
    return ds


def handle_mpps_create(event: Any) -> tuple[int | Dataset, Dataset | None]:
    """EVT_N_CREATE for Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
    node = calling_node(event.assoc)
    if node is None:
        return 0x0124, None  # Refused: not authorized
    given = event.request.AffectedSOPInstanceUID
    uid = str(given) if given else new_uid()
    try:
        attributes = event.attribute_list
    except Exception as exc:
        log.warning("unreadable MPPS N-CREATE from %s: %s", node.ae_title, exc)
        return 0x0107, None  # Attribute list error
    try:
        actions.do_create_mpps(uid, attributes, institution=node.institution, ae_title=node.ae_title)
    except actions.MppsError as exc:
        log.info("MPPS N-CREATE from %s refused: %s", node.ae_title, exc.comment)
        return _mpps_status(exc, with_tags=False), None
    reply = Dataset()
    if not given:
        reply.AffectedSOPInstanceUID = uid  # PS3.7 10.1.5.1.4: the SCP assigned it
    return SUCCESS, reply


def handle_mpps_set(event: Any) -> tuple[int | Dataset, Dataset | None]:
    """EVT_N_SET for Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
    node = calling_node(event.assoc)
    if node is None:
        return 0x0124, None
    uid = str(event.request.RequestedSOPInstanceUID or "")
    try:
        modifications = event.modification_list
    except Exception as exc:
        log.warning("unreadable MPPS N-SET from %s: %s", node.ae_title, exc)
        return 0x0106, None
    try:
        actions.do_update_mpps(uid, modifications, institution=node.institution, ae_title=node.ae_title)
    except actions.MppsError as exc:
        log.info("MPPS N-SET from %s refused: %s", node.ae_title, exc.comment)
        return _mpps_status(exc, with_tags=True), None
    return SUCCESS, None


def services() -> list[DimseService]:
    return [
        DimseService(evt.EVT_C_FIND, (ModalityWorklistInformationFind,), handle_mwl_find),
        DimseService(evt.EVT_N_CREATE, (ModalityPerformedProcedureStep,), handle_mpps_create),
        DimseService(evt.EVT_N_SET, (ModalityPerformedProcedureStep,), handle_mpps_set),
    ]
