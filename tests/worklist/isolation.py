"""The worklist's objects and routes for the tenant-isolation harness (tests/isolation)."""

from __future__ import annotations

import secrets
from pathlib import Path
from tempfile import mkdtemp

from pydicom import dcmread
from pydicom.data import get_testdata_file

from archive.ingest import store_instance
from archive.models import DicomNode
from pacs_cloud.lib.uids import new_uid
from tests import isolation
from worklist import actions
from worklist.models import Procedure, ReconciliationItem, Station

from .conftest import local, today


@isolation.factory
def worklist_order(tenant):
    institution = tenant.institution
    token = secrets.token_hex(4).upper()
    procedure = Procedure.objects.create(
        institution=institution, code=f"P{token}", name=f"Procedure{token}", modality="CT"
    )
    node = DicomNode.objects.create(institution=institution, ae_title=f"CT{token}", host="127.0.0.1")
    station = Station.objects.create(institution=institution, node=node, name=f"St{token}", modality="CT")
    patient = actions.do_register_patient(
        institution, name=f"Secret{token}^Order", patient_id=f"PID{token}", allow_possible_duplicate=True
    )
    order = actions.do_create_order(
        institution,
        patient=patient,
        procedure=procedure,
        station=station,
        scheduled_at=local(today(), 9),
        clinical_info=f"History{token}",
    )
    return isolation.Made(
        values={
            "order.id": order.pk,
            "procedure.id": procedure.pk,
            "station.id": station.pk,
            "worklist_patient.patient_id": patient.patient_id,
        },
        secrets=[f"Secret{token}", f"PID{token}", order.accession_number, f"History{token}"],
    )


@isolation.factory
def reconciliation_item(tenant):
    token = secrets.token_hex(4).upper()
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.AccessionNumber = f"Unmatched{token}^X", f"U{token}", ""
    path = Path(mkdtemp()) / "unmatched.dcm"
    ds.save_as(path)
    study = store_instance(path, institution=tenant.institution).instance.series.study
    item = ReconciliationItem.objects.get_or_create(study=study, defaults={"institution": tenant.institution})[0]
    return isolation.Made(values={"reconciliation.id": item.pk}, secrets=[f"Unmatched{token}", f"U{token}"])


POST_ONLY = "a POST-only action; its GET answers 405 to everyone"
REASON = {"reason": isolation.const("isolation check")}

isolation.route("/api/v1/orders/{pk}/", pk="order.id", bodies={"patch": {"priority": isolation.const("stat")}})
for verb, body in (("arrive", {}), ("cancel", REASON), ("discontinue", REASON)):
    isolation.route(
        f"/api/v1/orders/{{pk}}/{verb}/", pk="order.id", bodies={"post": body}, reachable=False, reason=POST_ONLY
    )
    isolation.route(
        f"/worklist/orders/{{pk}}/{verb}/",
        pk="order.id",
        bodies={"post": isolation.Form(body)},
        reachable=False,
        reason=POST_ONLY,
    )
isolation.route("/api/v1/orders/", queries=[{"patient_id": isolation.Ref("worklist_patient.patient_id")}])
# The registration page's patient search echoes what was typed (the search
# box keeps it), so it is not walked with another institution's IDs; that the
# search finds only the institution's own patients is tests/worklist/test_views.
isolation.route("/worklist/orders/{pk}/", pk="order.id")
isolation.route(
    "/worklist/orders/{pk}/edit/", pk="order.id", bodies={"post": isolation.Form({"priority": isolation.const("stat")})}
)
isolation.route("/api/v1/procedures/{pk}/", pk="procedure.id")
isolation.route("/api/v1/stations/{pk}/", pk="station.id")
isolation.route(
    "/worklist/catalogue/procedures/{pk}/",
    pk="procedure.id",
    bodies={"post": isolation.Form({"code": isolation.const("X"), "name": isolation.const("X")})},
)
isolation.route(
    "/worklist/catalogue/stations/{pk}/",
    pk="station.id",
    bodies={"post": isolation.Form({"name": isolation.const("X")})},
)
isolation.route("/api/v1/reconciliation/{pk}/", pk="reconciliation.id")
isolation.route(
    "/api/v1/reconciliation/{pk}/link/",
    pk="reconciliation.id",
    bodies={"post": {"order": isolation.Ref("order.id")}},
    reachable=False,
    reason=POST_ONLY,
)
isolation.route(
    "/api/v1/reconciliation/{pk}/dismiss/",
    pk="reconciliation.id",
    bodies={"post": {"note": isolation.const("isolation check")}},
    reachable=False,
    reason=POST_ONLY,
)
isolation.route(
    "/api/v1/reconciliation/{pk}/correct/",
    pk="reconciliation.id",
    bodies={"post": {"name": isolation.const("CHECK^ISOLATION")}},
    reachable=False,
    reason=POST_ONLY,
)
isolation.route(
    "/worklist/reconciliation/{pk}/correct/",
    pk="reconciliation.id",
    bodies={"post": isolation.Form({"fix-family_name": isolation.const("CHECK")})},
    reachable=False,
    reason=POST_ONLY,
)
isolation.route("/worklist/reconciliation/{pk}/", pk="reconciliation.id")
isolation.route(
    "/worklist/reconciliation/{pk}/link/",
    pk="reconciliation.id",
    bodies={"post": isolation.Form({"order": isolation.Ref("order.id")})},
    reachable=False,
    reason=POST_ONLY,
)
isolation.route(
    "/worklist/reconciliation/{pk}/dismiss/",
    pk="reconciliation.id",
    bodies={"post": isolation.Form({"note": isolation.const("isolation check")})},
    reachable=False,
    reason=POST_ONLY,
)
