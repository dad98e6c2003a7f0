"""Cloud side: the worklist feed re-sends an order when its patient, procedure or station changes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from archive import actions as archive_actions
from archive.edge import enrolment
from archive.edge.replica import decode
from tests.edge.test_enrolment import edge_client
from tests.worklist.conftest import local, make_site, today
from worklist import actions
from worklist.models import Order


@pytest.fixture
def feed(tenants):
    site = make_site(tenants.a.institution, "ALPHA")
    patient = actions.do_register_patient(
        tenants.a.institution, name="WANG^FANG", patient_id="FEED1", allow_possible_duplicate=True
    )
    order = actions.do_create_order(
        tenants.a.institution,
        patient=patient,
        procedure=site.ct,
        station=site.ct_station,
        scheduled_at=local(today(), 9),
    )
    other = actions.do_create_order(
        tenants.a.institution,
        patient=actions.do_register_patient(
            tenants.a.institution, name="LI^NA", patient_id="FEED2", allow_possible_duplicate=True
        ),
        procedure=site.mr,
        station=site.mr_station,
        scheduled_at=local(today(), 10),
    )
    # The order was last changed well before the cursor's overlap window, the other one later.
    Order.objects.filter(pk=order.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=10))
    Order.objects.filter(pk=other.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=2))
    _, token = enrolment.do_enrol_edge(tenants.a.institution, name="Feed", acting_user=tenants.a.institution_admin)
    client = edge_client(token)
    first = client.get("/api/v1/edge/worklist/").json()
    assert [item["key"] for item in first["items"]] == [str(order.pk), str(other.pk)]

    def changes() -> list[dict]:
        answer = client.get("/api/v1/edge/worklist/", {"cursor": first["cursor"]})
        assert answer.status_code == 200, answer.content
        return [item for item in answer.json()["items"] if item["key"] == str(order.pk)]

    return order, site, changes


def test_an_unchanged_order_is_not_sent_again(feed):
    _, _, changes = feed
    assert changes() == []


def test_corrected_demographics_reach_the_edge(feed, tenants):
    order, _, changes = feed
    archive_actions.do_correct_patient_demographics(
        order.patient, name="WANG^FANGFANG", birth_date=dt.date(1970, 5, 4), reason="typo"
    )
    [item] = changes()
    record = decode(item["record"])
    assert record["PatientName"] == "WANG^FANGFANG"
    assert record["PatientBirthDate"] == dt.date(1970, 5, 4)


def test_a_renamed_procedure_reaches_the_edge(feed):
    order, site, changes = feed
    site.ct.name = "CT chest low dose"
    site.ct.save()
    [item] = changes()
    assert decode(item["record"])["RequestedProcedureDescription"] == "CT chest low dose"


def test_a_moved_station_reaches_the_edge(feed):
    order, site, changes = feed
    node = site.ct_station.node
    node.ae_title = "ALPHA_CT2"
    node.save()
    [item] = changes()
    assert item["station_ae_title"] == "ALPHA_CT2"
    site.ct_station.location = "ROOM 7"
    site.ct_station.save()
    [item] = changes()
    assert decode(item["record"])["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepLocation"] == "ROOM 7"
