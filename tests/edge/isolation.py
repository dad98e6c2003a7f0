"""The edge gateways' objects and routes for the tenant-isolation harness (tests/isolation)."""

from __future__ import annotations

import secrets

from archive.edge import enrolment
from tests import isolation


@isolation.factory
def edge_gateway(tenant):
    """An enrolled edge with a quarantined instance, as its admin enrolled it."""
    token = secrets.token_hex(4)
    edge, _ = enrolment.do_enrol_edge(
        tenant.institution, name=f"EdgeSecret{token}", acting_user=tenant.institution_admin
    )
    enrolment.do_record_quarantine(
        edge, [{"sop_instance_uid": f"1.2.3.{int(token, 16)}", "sha256": "0" * 64, "reason": f"Refused{token}"}]
    )
    return isolation.Made(values={"edge.id": edge.pk}, secrets=[f"EdgeSecret{token}", f"Refused{token}"])


isolation.route("/api/v1/edges/", bodies={"post": {"institution": isolation.Ref("institution.id"), "name": "X"}})
isolation.route("/api/v1/edges/{pk}/", pk="edge.id")
isolation.route("/api/v1/edges/{pk}/quarantine/", pk="edge.id")
isolation.route("/api/v1/edges/{pk}/rotate/", pk="edge.id", reachable=False, reason="POST only")
isolation.route("/api/v1/edges/{pk}/revoke/", pk="edge.id", reachable=False, reason="POST only")
isolation.route("/archive/edges/{pk}/", pk="edge.id", bodies={"post": isolation.Form({"action": "rotate"})})
# Called by an enrolled edge with its own token; every user of the walk is refused (403).
for template in [
    "/api/v1/edge/heartbeat/",
    "/api/v1/edge/quarantine/",
    "/api/v1/edge/confirm/",
    "/api/v1/edge/config/",
    "/api/v1/edge/worklist/",
    "/api/v1/edge/mpps/",
]:
    isolation.route(template)
isolation.route("/archive/edges/", bodies={"post": isolation.Form({"name": "Walked"})})
