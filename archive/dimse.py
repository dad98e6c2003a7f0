"""The DICOM service framework shared by the cloud and the edge.

Apps contribute services (``<app>.dimse.services()`` listed in
``settings.DIMSE_SERVICE_PROVIDERS``); :func:`build_ae` registers their
presentation contexts and one dispatcher per DIMSE event that hands each
request to the service for its SOP class — C-FIND, for one, is served both by
Query/Retrieve (archive) and by Modality Worklist (worklist).

Only configured peers (:class:`archive.models.DicomNode`) may associate; the
calling AE title decides the institution a request acts for.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils.module_loading import import_string
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from pacs_cloud.models import Institution

from .models import DicomNode

log = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

# DIMSE status codes used by more than one service (PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class DimseService:
    """One SCP service: the event it answers, for which SOP classes, and how."""

    event: Any  # a pynetdicom intervention event, e.g. evt.EVT_C_FIND
    sop_classes: tuple[str, ...]
    handler: Callable[..., Any]
    transfer_syntaxes: tuple[str, ...] | None = None  # None: the uncompressed ones


def calling_ae_title(assoc: Any) -> str:
    # During EVT_REQUESTED only the A-ASSOCIATE-RQ primitive carries the title.
    title = assoc.requestor.ae_title or getattr(assoc.requestor.primitive, "calling_ae_title", "") or ""
    return title.strip()


def calling_node(assoc: Any) -> DicomNode | None:
    """The configured node behind an association, or None for an unknown peer."""
    ae_title = calling_ae_title(assoc)
    node = DicomNode.objects.select_related("institution").filter(ae_title=ae_title, is_active=True).first()
    if node is None or not node.institution.is_active:
        return None
    if node.host and node.host != assoc.requestor.address:
        return None
    return node


def calling_institution(assoc: Any) -> Institution | None:
    node = calling_node(assoc)
    return node.institution if node else None


def _handle_association_requested(event: Any) -> None:
    close_old_connections()
    if calling_node(event.assoc) is None:
        log.warning(
            "refused association from unknown AE %r at %s", calling_ae_title(event.assoc), event.assoc.requestor.address
        )
        # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognized
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()  # lets the DUL flush the A-ASSOCIATE-RJ before the socket closes


def _handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def collect_services(providers: Iterable[str] | None = None) -> list[DimseService]:
    found = [DimseService(evt.EVT_C_ECHO, (Verification,), _handle_echo)]
    for dotted in providers if providers is not None else settings.DIMSE_SERVICE_PROVIDERS:
        found.extend(import_string(dotted)())
    return found


def _dispatcher(services: list[DimseService]) -> Callable[..., Any]:
    by_class = {sop_class: service for service in services for sop_class in service.sop_classes}

    def dispatch(event: Any, *args: Any) -> Any:
        close_old_connections()
        request = event.request
        sop_class = str(
            getattr(request, "AffectedSOPClassUID", None) or getattr(request, "RequestedSOPClassUID", None) or ""
        )
        service = by_class.get(sop_class) or (services[0] if len(services) == 1 else None)
        if service is None:
            return 0x0122  # SOP class not supported
        return service.handler(event, *args)

    return dispatch


class NoDelayAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket: without it each DIMSE round
    trip waits ~40 ms for Nagle's algorithm and the peer's delayed ACK."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = AssociationServer.get_request(self)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def build_ae(ae_title: str, services: list[DimseService]) -> tuple[AE, list[tuple[Any, Callable[..., Any]]]]:
    """An AE supporting every service's contexts, and the event handlers to bind."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 0  # no limit: fewer PDUs for large instances
    handlers: list[tuple[Any, Callable[..., Any]]] = [(evt.EVT_REQUESTED, _handle_association_requested)]
    by_event: dict[Any, list[DimseService]] = {}
    for service in services:
        by_event.setdefault(service.event, []).append(service)
        for sop_class in service.sop_classes:
            ae.add_supported_context(sop_class, list(service.transfer_syntaxes or UNCOMPRESSED_SYNTAXES))
    for event, group in by_event.items():
        handlers.append((event, _dispatcher(group)))
    return ae, handlers


def start_server(
    ae_title: str, host: str, port: int, providers: Iterable[str] | None = None
) -> ThreadedAssociationServer:
    """Start serving in background threads; returns the server (``shutdown()`` stops it)."""
    ae, handlers = build_ae(ae_title, collect_services(providers))
    server = ae.make_server((host, port), evt_handlers=handlers, server_class=NoDelayAssociationServer)
    thread = threading.Thread(target=server.serve_forever, name=f"dimse-{ae_title}", daemon=True)
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it as well
    return server
