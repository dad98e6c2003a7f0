"""The worklist at the edge gateway: MWL and MPPS from a replica, and the cloud endpoints that feed it.

Cloud side (called by an enrolled edge with its token):

* ``GET /api/v1/edge/worklist/?cursor=…`` — the institution's orders changed
  since the cursor (the first call: every order on the worklist), each as
  its worklist record (:func:`worklist.mwl.order_record`) and whether it is
  still on the worklist; and the next cursor. Rows changed shortly before
  the cursor are sent again, so a transaction that committed late is not
  missed; applying an item twice changes nothing. A change to an order's
  patient, procedure or station moves the change time of its scheduled
  orders (:func:`worklist.receivers.on_order_part_saved`), so it is sent too.
* ``POST /api/v1/edge/mpps/`` — one MPPS N-CREATE or N-SET the edge received
  while it could not reach the cloud, applied through the same actions as
  the cloud's own MPPS service.

Edge side (:class:`EdgeWorklist`, listed in ``settings.EDGE_EXTENSIONS``):
the Modality Worklist C-FIND answered from the replica in the edge's SQLite
outbox with the cloud's matching code (:mod:`pacs_cloud.lib.dicom_match`,
character sets as :mod:`worklist.mwl` chooses them), so a modality gets the
same answer from the edge as from the cloud, also while the cloud is down;
MPPS N-CREATE/N-SET checked against the steps the edge received with the
cloud's own rules (:func:`worklist.actions.check_mpps_create`,
:func:`worklist.actions.merge_mpps_set`), queued durably and relayed in order
at once by a thread of their own (never behind the images being forwarded),
or when the cloud answers again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from archive.dimse import DimseService, calling_ae_title
from archive.edge.client import CloudUnavailable
from archive.edge.cloud_api import EdgeView
from archive.edge.replica import decode, encode
from archive.models import DicomNode
from pacs_cloud.lib.dicom_match import InvalidKey, check_keys, record_matches, response_identifier
from pacs_cloud.lib.uids import is_valid_uid, new_uid

from . import actions, mwl
from .dimse import (
    CANCELLED,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    PENDING_OPTIONAL_KEYS_UNSUPPORTED,
    SUCCESS,
    UNABLE_TO_PROCESS,
    _failure,
    _mpps_status,
    unsupported_keys,
)
from .models import Order, PerformedProcedureStep

if TYPE_CHECKING:
    from archive.edge.gateway import Gateway

log = logging.getLogger(__name__)

FEED_LIMIT = 5000
FEED_OVERLAP = dt.timedelta(seconds=30)


# Cloud side ---------------------------------------------------------------------------------


class WorklistFeedView(EdgeView):
    """``GET /api/v1/edge/worklist/``: orders changed since ``cursor``, as worklist records."""

    @extend_schema(
        responses=inline_serializer(
            "EdgeWorklistFeed",
            {"cursor": serializers.CharField(), "items": serializers.ListField(child=serializers.DictField())},
        )
    )
    def get(self, request: Request) -> Response:
        edge = self.edge(request)
        cursor = request.query_params.get("cursor", "")
        orders = Order.objects.filter(institution_id=edge.institution_id).select_related(
            "patient", "procedure", "station__node"
        )
        if cursor:
            try:
                since = dt.datetime.fromisoformat(cursor)
            except ValueError:
                raise ValidationError({"cursor": ["not a cursor this service gave"]}) from None
            orders = orders.filter(updated_at__gte=since - FEED_OVERLAP)
        else:
            orders = orders.filter(state__in=Order.WORKLIST_STATES)
        rows = list(orders.order_by("updated_at", "pk")[:FEED_LIMIT])
        items = []
        for order in rows:
            order.institution = edge.institution
            active = order.state in Order.WORKLIST_STATES
            items.append(
                {
                    "key": str(order.pk),
                    "active": active,
                    "scheduled_date": order.scheduled_date.isoformat(),
                    "station_ae_title": order.station.node.ae_title,
                    "character_set": order.station.character_set,
                    "record": encode(mwl.order_record(order)) if active else None,
                }
            )
        latest = max((order.updated_at for order in rows), default=None)
        return Response({"cursor": latest.isoformat() if latest else cursor, "items": items})


class MppsRelayView(EdgeView):
    """``POST /api/v1/edge/mpps/``: an MPPS message a modality sent to the edge, relayed."""

    @extend_schema(
        request=inline_serializer(
            "EdgeMpps",
            {
                "kind": serializers.ChoiceField(["create", "set"]),
                "sop_instance_uid": serializers.CharField(),
                "ae_title": serializers.CharField(),
                "dataset": serializers.DictField(),
            },
        ),
        responses=inline_serializer(
            "EdgeMppsResult", {"status": serializers.IntegerField(), "comment": serializers.CharField()}
        ),
    )
    def post(self, request: Request) -> Response:
        edge = self.edge(request)
        data = request.data if isinstance(request.data, dict) else {}
        kind, uid, ae_title = data.get("kind"), str(data.get("sop_instance_uid", "")), str(data.get("ae_title", ""))
        if kind not in ("create", "set") or not isinstance(data.get("dataset"), dict):
            raise ValidationError({"detail": "kind (create or set), sop_instance_uid, ae_title and dataset are needed"})
        if not DicomNode.objects.filter(institution_id=edge.institution_id, ae_title=ae_title).exists():
            raise ValidationError({"ae_title": [f"{ae_title} is not a DICOM node of this institution"]})
        try:
            dataset = Dataset.from_json(data["dataset"])
        except Exception as exc:
            raise ValidationError({"dataset": [f"unreadable: {exc}"]}) from None
        try:
            if kind == "create":
                actions.do_create_mpps(uid, dataset, institution=edge.institution, ae_title=ae_title)
            else:
                actions.do_update_mpps(uid, dataset, institution=edge.institution, ae_title=ae_title)
        except actions.MppsError as exc:
            return Response({"status": exc.status, "comment": exc.comment}, status=409)
        return Response({"status": SUCCESS, "comment": ""})


# Edge side ----------------------------------------------------------------------------------


class EdgeWorklist:
    """The edge's worklist: replica sync, MWL C-FIND from it, MPPS queued and relayed."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.outbox = gateway.outbox
        self.cloud = gateway.cloud
        self._mpps_lock = threading.Lock()
        # Set when an MPPS message is queued: it is relayed at once, not at the next sync,
        # so the cloud hears a step has started while its images are still coming.
        self.mpps_queued = threading.Event()

    def services(self) -> list[DimseService]:
        return [
            DimseService(evt.EVT_C_FIND, (ModalityWorklistInformationFind,), self.handle_mwl_find),
            DimseService(evt.EVT_N_CREATE, (ModalityPerformedProcedureStep,), self.handle_mpps_create),
            DimseService(evt.EVT_N_SET, (ModalityPerformedProcedureStep,), self.handle_mpps_set),
        ]

    def jobs(self) -> list[tuple[Any, ...]]:
        return [(settings.EDGE_SYNC_SECONDS, self.sync), (settings.EDGE_SYNC_SECONDS, self.relay, self.mpps_queued)]

    def report(self) -> dict[str, Any]:
        waiting = self.outbox.query("SELECT COUNT(*) FROM mpps WHERE relayed_at IS NULL")[0][0]
        refused = self.outbox.query("SELECT COUNT(*) FROM mpps WHERE relayed_at IS NOT NULL AND reason != ''")[0][0]
        orders = self.outbox.query("SELECT COUNT(*) FROM worklist")[0][0]
        return {"worklist_orders": orders, "mpps_waiting": waiting, "mpps_refused": refused}

    # The replica ----------------------------------------------------------------------------

    def sync(self) -> bool:
        cursor = self.outbox.get_state("worklist_cursor")
        try:
            feed = self.cloud.get_json("/api/v1/edge/worklist/", cursor=cursor)
        except CloudUnavailable as exc:
            log.info("worklist not synced: %s", exc)
            return False
        with self.outbox.transaction() as db:
            for item in feed["items"]:
                if item["active"]:
                    db.execute(
                        "INSERT OR REPLACE INTO worklist (accession_key, record, scheduled_date, station_ae_title)"
                        " VALUES (?, ?, ?, ?)",
                        (item["key"], json.dumps(item), item["scheduled_date"], item["station_ae_title"]),
                    )
                else:
                    db.execute("DELETE FROM worklist WHERE accession_key = ?", (item["key"],))
            db.execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES ('worklist_cursor', ?)", (feed["cursor"] or "",)
            )
        self.outbox.set_state("last_sync_at", str(time.time()))
        return True

    def _items(self) -> Iterator[dict[str, Any]]:
        rows = self.outbox.query("SELECT record FROM worklist ORDER BY scheduled_date, accession_key")
        items = [json.loads(row[0]) for row in rows]
        records = [(decode(item["record"]), item) for item in items]
        records.sort(key=lambda pair: _start(pair[0]))
        for record, item in records:
            yield {**item, "record": record}

    def handle_mwl_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND for Modality Worklist Information Model – FIND, from the replica."""
        ae_title = calling_ae_title(event.assoc)
        node = self.gateway.replica.node(ae_title)
        if node is None:
            yield _failure(UNABLE_TO_PROCESS, "calling AE is not configured"), None
            return
        try:
            identifier = event.identifier
            check_keys(identifier)
        except InvalidKey as exc:
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
            return
        except Exception as exc:
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"unreadable identifier: {exc}"), None
            return
        requested = mwl.requested_character_set(identifier)
        status = PENDING
        count = 0
        for item in self._items():
            record = item["record"]
            if not record_matches(identifier, record):
                continue
            if event.is_cancelled:
                yield CANCELLED, None
                return
            if count == 0 and unsupported_keys(identifier, record):
                status = PENDING_OPTIONAL_KEYS_UNSUPPORTED
            charset = mwl.answer_character_set(record, requested=requested, preferred=item.get("character_set") or "")
            count += 1
            yield status, response_identifier(identifier, record, character_set=charset)

    # MPPS -------------------------------------------------------------------------------------

    def _queue(self, kind: str, uid: str, ae_title: str, dataset: Dataset) -> None:
        with self.outbox.transaction() as db:
            db.execute(
                "INSERT INTO mpps (kind, sop_instance_uid, ae_title, dataset, queued_at) VALUES (?, ?, ?, ?, ?)",
                (kind, uid, ae_title, json.dumps(dataset.to_json_dict()), time.time()),
            )
        self.mpps_queued.set()

    def handle_mpps_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_CREATE (PS3.4 F.7.2.1): queued durably, relayed to the cloud when it answers."""
        ae_title = calling_ae_title(event.assoc)
        given = event.request.AffectedSOPInstanceUID
        uid = str(given) if given else new_uid()
        if not is_valid_uid(uid):
            return 0x0117, None  # Invalid object instance
        try:
            attributes = event.attribute_list
        except Exception:
            return 0x0107, None  # Attribute list error
        with self._mpps_lock:
            try:
                actions.check_mpps_create(uid, attributes)
                if self._local_step(uid) is not None:
                    raise actions.MppsError(actions.DUPLICATE_SOP_INSTANCE, "a step with this SOP Instance UID exists")
            except actions.MppsError as exc:
                log.info("MPPS N-CREATE from %s refused: %s", ae_title, exc.comment)
                return _mpps_status(exc, with_tags=False), None
            self._queue("create", uid, ae_title, attributes)
        studies = {
            str(item.get("StudyInstanceUID", "")) for item in attributes.get("ScheduledStepAttributesSequence", [])
        }
        self._mark_local(studies, "STARTED")
        reply = Dataset()
        if not given:
            reply.AffectedSOPInstanceUID = uid
        return SUCCESS, reply

    def handle_mpps_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_SET (PS3.4 F.7.2.2): queued behind the step's N-CREATE."""
        ae_title = calling_ae_title(event.assoc)
        uid = str(event.request.RequestedSOPInstanceUID or "")
        try:
            modifications = event.modification_list
        except Exception:
            return 0x0106, None
        with self._mpps_lock:
            try:
                stored = self._local_step(uid)
                if stored is None:
                    raise actions.MppsError(actions.NO_SUCH_OBJECT_INSTANCE, "no such Performed Procedure Step")
                state = actions.PPS_STATUS.get(str(stored.get("PerformedProcedureStepStatus", "")), "")
                _, new_state = actions.merge_mpps_set(state, stored, modifications)
            except actions.MppsError as exc:
                log.info("MPPS N-SET from %s refused: %s", ae_title, exc.comment)
                return _mpps_status(exc, with_tags=True), None
            self._queue("set", uid, ae_title, modifications)
        if new_state != PerformedProcedureStep.State.IN_PROGRESS:
            self._mark_local(self._studies_of(uid), None)
        return SUCCESS, None

    def _local_step(self, uid: str) -> Dataset | None:
        """The step as this edge knows it: its N-CREATE with the N-SETs it accepted since, applied
        in order (the modalities of the edge's hospital send their steps here), or None."""
        rows = self.outbox.query("SELECT kind, dataset FROM mpps WHERE sop_instance_uid = ? ORDER BY seq", (uid,))
        if not rows or rows[0][0] != "create":
            return None
        merged = Dataset.from_json(rows[0][1])
        for _, raw in rows[1:]:
            for element in Dataset.from_json(raw):
                if element.tag.group != 0:
                    merged[element.tag] = element
        return merged

    def _studies_of(self, uid: str) -> set[str]:
        found: set[str] = set()
        for (dataset,) in self.outbox.query(
            "SELECT dataset FROM mpps WHERE kind = 'create' AND sop_instance_uid = ?", (uid,)
        ):
            items = Dataset.from_json(dataset).get("ScheduledStepAttributesSequence", [])
            found |= {str(item.get("StudyInstanceUID", "")) for item in items}
        return found - {""}

    def _mark_local(self, study_uids: set[str], status: str | None) -> None:
        """Show the modality's progress in the replica until the cloud's own answer replaces it:
        a started step is STARTED, a finished one leaves the worklist (as in the cloud)."""
        study_uids.discard("")
        if not study_uids:
            return
        with self.outbox.transaction() as db:
            for key, raw in db.execute("SELECT accession_key, record FROM worklist").fetchall():
                item = json.loads(raw)
                if item["record"].get("StudyInstanceUID") not in study_uids:
                    continue
                if status is None:
                    db.execute("DELETE FROM worklist WHERE accession_key = ?", (key,))
                    continue
                for step in item["record"].get("ScheduledProcedureStepSequence") or []:
                    step["ScheduledProcedureStepStatus"] = status
                db.execute("UPDATE worklist SET record = ? WHERE accession_key = ?", (json.dumps(item), key))

    def relay(self) -> int:
        """Relay queued MPPS messages in the order they came; stops at the first the cloud cannot take now."""
        relayed = 0
        rows = self.outbox.query(
            "SELECT seq, kind, sop_instance_uid, ae_title, dataset FROM mpps WHERE relayed_at IS NULL ORDER BY seq"
        )
        for seq, kind, uid, ae_title, dataset in rows:
            body = {"kind": kind, "sop_instance_uid": uid, "ae_title": ae_title, "dataset": json.loads(dataset)}
            try:
                answer = self.cloud.call("POST", "/api/v1/edge/mpps/", json=body)
            except CloudUnavailable as exc:
                log.info("MPPS not relayed yet: %s", exc)
                with self.outbox.transaction() as db:
                    db.execute("UPDATE mpps SET attempts = attempts + 1, reason = ? WHERE seq = ?", (str(exc), seq))
                return relayed
            reason = ""
            if answer.status_code != 200:
                found = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
                duplicate = kind == "create" and found.get("status") == actions.DUPLICATE_SOP_INSTANCE
                if not duplicate:  # a create relayed before whose answer was lost is done, not refused
                    reason = f"refused by the cloud: {found or answer.text[:200]}"
                    log.warning("MPPS %s %s %s", kind, uid, reason)
            with self.outbox.transaction() as db:
                db.execute("UPDATE mpps SET relayed_at = ?, reason = ? WHERE seq = ?", (time.time(), reason, seq))
            relayed += 1
        return relayed


def _start(record: dict[str, Any]) -> tuple:
    step = (record.get("ScheduledProcedureStepSequence") or [{}])[0]
    return (
        step.get("ScheduledProcedureStepStartDate") or dt.date.min,
        step.get("ScheduledProcedureStepStartTime") or dt.time.min,
        record.get("AccessionNumber") or "",
    )
