"""/api/v1/orders/ and friends, called as external systems call them: with a bearer token."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from archive.models import Patient
from pacs_cloud.lib.uids import is_valid_uid
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client
from worklist import signals
from worklist.models import Order

from .conftest import local, today


def body(site, **overrides):
    data = {
        "patient": {"name": "WANG^XIAODONG=王^小东", "birth_date": "1970-02-03", "sex": "M"},
        "procedure": str(site.ct.pk),
        "station": str(site.ct_station.pk),
        "scheduled_at": local(today(), 11).isoformat(),
        "priority": "urgent",
        "referring_physician": "LI^YISHENG=李^医生",
        "clinical_info": "Chest pain after a fall.",
    }
    data.update(overrides)
    return data


@pytest.fixture
def tech(tenants):
    return api_client(tenants.a.technologist)


def test_a_technologist_registers_an_exam_and_its_patient(tech, sites, tenants):
    response = tech.post("/api/v1/orders/", body(sites["a"]), format="json")
    assert response.status_code == 201, response.json()
    order = response.json()
    assert order["state"] == "scheduled"
    assert order["priority"] == "urgent"
    assert re.fullmatch(rf"ACH{today():%y%m%d}\d{{4}}", order["accession_number"])
    assert is_valid_uid(order["study_instance_uid"])
    assert order["patient"]["name"] == "WANG^XIAODONG=王^小东"
    assert order["patient"]["issuer"] == "ALPHA"
    assert order["station"]["ae_title"] == "ALPHA_CT"
    assert AuditEvent.objects.filter(action="worklist.order.create", object_id=order["id"]).exists()
    assert AuditEvent.objects.filter(action="worklist.patient.register").exists()


def test_accession_numbers_are_unique_and_sequential_per_institution(tech, sites, tenants):
    same = body(sites["a"], patient={"patient_id": "H1", "name": "LI^SI"})
    numbers = [tech.post("/api/v1/orders/", same, format="json").json()["accession_number"] for _ in range(3)]
    assert len(set(numbers)) == 3
    assert [int(n[-4:]) for n in numbers] == [1, 2, 3]
    other = api_client(tenants.b.technologist).post("/api/v1/orders/", body(sites["b"]), format="json").json()
    assert other["accession_number"].startswith("BCH")


def test_the_patient_is_found_first_by_patient_id(tech, sites):
    first = tech.post(
        "/api/v1/orders/", body(sites["a"], patient={"patient_id": "H123", "name": "LI^SI"}), format="json"
    )
    assert first.status_code == 201
    again = tech.post("/api/v1/orders/", body(sites["a"], patient={"patient_id": "H123"}), format="json")
    assert again.status_code == 201
    assert again.json()["patient"]["id"] == first.json()["patient"]["id"]
    clash = tech.post(
        "/api/v1/orders/", body(sites["a"], patient={"patient_id": "H123", "name": "ZHAO^LIU"}), format="json"
    )
    assert clash.status_code == 400
    assert "registered as LI^SI" in str(clash.json())
    assert Patient.objects.count() == 1


def test_a_likely_duplicate_patient_is_pointed_out(tech, sites):
    tech.post("/api/v1/orders/", body(sites["a"]), format="json")
    same_person = body(sites["a"], patient={"name": "wang^xiaodong", "birth_date": "1970-02-03"})
    response = tech.post("/api/v1/orders/", same_person, format="json")
    assert response.status_code == 409
    assert response.json()["candidates"][0]["name"] == "WANG^XIAODONG=王^小东"
    same_person["patient"]["allow_possible_duplicate"] = True
    assert tech.post("/api/v1/orders/", same_person, format="json").status_code == 201
    assert Patient.objects.count() == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"procedure": "mr"}, "station"),  # an MR procedure on the CT station
        ({"procedure": "other"}, "procedure"),  # another institution's catalogue
        ({"scheduled_at": "2030-01-01T10:00:00"}, "scheduled_at"),  # no time zone
        ({"priority": "whenever"}, "priority"),
        ({"patient": {}}, "patient"),
    ],
)
def test_bad_orders_are_refused_with_a_reason(tech, sites, change, field):
    values = dict(change)
    if values.get("procedure") == "mr":
        values["procedure"] = str(sites["a"].mr.pk)
    if values.get("procedure") == "other":
        values["procedure"] = str(sites["b"].ct.pk)
    response = tech.post("/api/v1/orders/", body(sites["a"], **values), format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Order.objects.count() == 0


def test_lists_show_only_the_callers_institution(tech, sites, tenants, order_factory):
    mine = [order_factory("a") for _ in range(3)]
    order_factory("b")
    response = tech.get("/api/v1/orders/", {"date": today().isoformat()})
    assert response.status_code == 200
    assert sorted(o["id"] for o in response.json()["results"]) == sorted(str(o.pk) for o in mine)
    assert api_client(tenants.c.technologist).get("/api/v1/orders/").json()["results"] == []


def test_the_list_costs_the_same_queries_for_any_number_of_orders(tech, sites, order_factory):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    order_factory("a")
    tech.get("/api/v1/orders/")  # warm up: token touch, content types
    with CaptureQueriesContext(connection) as one:
        tech.get("/api/v1/orders/")
    for _ in range(4):
        order_factory("a")
    with CaptureQueriesContext(connection) as five:
        assert len(tech.get("/api/v1/orders/").json()["results"]) == 5
    assert len(five) == len(one)


def test_another_institution_gets_404_on_every_order_route(sites, tenants, order_factory):
    order = order_factory("a")
    outsider = api_client(tenants.c.technologist)
    assert outsider.get(f"/api/v1/orders/{order.pk}/").status_code == 404
    assert outsider.patch(f"/api/v1/orders/{order.pk}/", {"priority": "stat"}, format="json").status_code == 404
    for verb in ("arrive", "cancel", "discontinue"):
        assert outsider.post(f"/api/v1/orders/{order.pk}/{verb}/", {"reason": "x"}, format="json").status_code == 404
    assert Order.objects.get(pk=order.pk).state == Order.State.SCHEDULED


def test_a_clinician_reads_orders_but_does_not_change_them(sites, tenants, order_factory):
    order = order_factory("a")
    doctor = api_client(tenants.a.clinician)
    assert doctor.get(f"/api/v1/orders/{order.pk}/").status_code == 200
    assert doctor.post(f"/api/v1/orders/{order.pk}/cancel/", {"reason": "x"}, format="json").status_code == 403
    assert doctor.post("/api/v1/orders/", body(sites["a"]), format="json").status_code == 403
    assert AuditEvent.objects.filter(action="worklist.order.view", object_id=str(order.pk)).exists()


def test_an_order_is_rescheduled_and_its_priority_change_announced(
    tech, sites, order_factory, django_capture_on_commit_callbacks
):
    order = order_factory("a")
    heard = []
    signals.order_priority_changed.connect(lambda sender, **kw: heard.append(kw), weak=False, dispatch_uid="t1")
    try:
        later = local(today() + dt.timedelta(days=2), 8, 15)
        with django_capture_on_commit_callbacks(execute=True):
            response = tech.patch(
                f"/api/v1/orders/{order.pk}/", {"scheduled_at": later.isoformat(), "priority": "stat"}, format="json"
            )
    finally:
        signals.order_priority_changed.disconnect(dispatch_uid="t1")
    assert response.status_code == 200, response.json()
    order.refresh_from_db()
    assert (order.scheduled_date, order.scheduled_time) == (later.date(), dt.time(8, 15))
    assert order.priority == "stat"
    assert heard[0]["old_priority"] == "routine" and heard[0]["order"].pk == order.pk
    event = AuditEvent.objects.get(action="worklist.order.edit")
    assert event.detail["priority"] == {"old": "routine", "new": "stat"}


def test_a_started_exam_cannot_be_rescheduled_but_can_turn_stat(tech, sites, order_factory):
    from worklist.actions import do_start_order

    order = order_factory("a")
    do_start_order(order, actor_label="test")
    later = local(today(), 18).isoformat()
    assert tech.patch(f"/api/v1/orders/{order.pk}/", {"scheduled_at": later}, format="json").status_code == 400
    assert tech.patch(f"/api/v1/orders/{order.pk}/", {"priority": "stat"}, format="json").status_code == 200


def test_arrive_and_cancel_with_a_reason(tech, sites, order_factory, django_capture_on_commit_callbacks):
    order = order_factory("a")
    assert tech.post(f"/api/v1/orders/{order.pk}/arrive/").json()["state"] == "arrived"
    assert tech.post(f"/api/v1/orders/{order.pk}/cancel/", {}, format="json").status_code == 400
    heard = []
    signals.order_cancelled.connect(lambda sender, **kw: heard.append(kw["order"].pk), weak=False, dispatch_uid="t2")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = tech.post(f"/api/v1/orders/{order.pk}/cancel/", {"reason": "patient declined"}, format="json")
    finally:
        signals.order_cancelled.disconnect(dispatch_uid="t2")
    assert response.json()["state"] == "cancelled"
    assert response.json()["cancel_reason"] == "patient declined"
    assert heard == [order.pk]
    assert tech.post(f"/api/v1/orders/{order.pk}/arrive/").status_code == 409
    assert AuditEvent.objects.filter(action="worklist.order.cancel", object_id=str(order.pk)).exists()


def test_the_catalogue_and_stations_are_listed_per_institution(tech, sites):
    procedures = tech.get("/api/v1/procedures/").json()["results"]
    assert {p["code"] for p in procedures} == {"CTCHEST", "MRBRAIN"}
    assert {s["ae_title"] for s in tech.get("/api/v1/stations/").json()["results"]} == {"ALPHA_CT", "ALPHA_MR"}
