"""A birth date after today, at the institution, is refused at registration."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.urls import reverse

from archive.models import Patient
from tests.conftest import api_client
from worklist.models import Order

from .conftest import local, today

# 01:00 on 2 March in Shanghai, still 1 March in UTC.
SHANGHAI_JUST_AFTER_MIDNIGHT = dt.datetime(2026, 3, 1, 17, 0, tzinfo=dt.UTC)


def order_post(site, **extra):
    data = {
        "procedure": str(site.ct.pk),
        "station": str(site.ct_station.pk),
        "scheduled_date": today().isoformat(),
        "scheduled_time": "14:30",
        "priority": "routine",
        "new-family_name": "LIU",
        "new-given_name": "YANG",
    }
    data.update(extra)
    return data


def api_body(site, birth_date: str):
    return {
        "patient": {"name": "LIU^YANG=刘^洋", "birth_date": birth_date, "sex": "F"},
        "procedure": str(site.ct.pk),
        "station": str(site.ct_station.pk),
        "scheduled_at": local(today(), 11).isoformat(),
        "priority": "routine",
    }


@pytest.fixture
def tech_client(client, tenants):
    client.force_login(tenants.a.technologist)
    return client


def test_the_registration_page_refuses_a_birth_date_in_the_future(tech_client, sites):
    tomorrow = (today() + dt.timedelta(days=1)).isoformat()
    page = tech_client.post(reverse("worklist-register-order"), order_post(sites["a"], **{"new-birth_date": tomorrow}))
    assert page.status_code == 200
    assert f"The birth date {tomorrow} is in the future." in page.content.decode()
    assert not Patient.objects.exists() and not Order.objects.exists()


def test_the_api_refuses_a_birth_date_in_the_future(tenants, sites):
    tomorrow = (today() + dt.timedelta(days=1)).isoformat()
    response = api_client(tenants.a.technologist).post("/api/v1/orders/", api_body(sites["a"], tomorrow), format="json")
    assert response.status_code == 400
    assert "in the future" in str(response.json())
    assert not Patient.objects.exists()


def test_today_is_the_institutions_today(tenants, sites):
    tech = api_client(tenants.a.technologist)
    with time_machine.travel(SHANGHAI_JUST_AFTER_MIDNIGHT, tick=True):
        born_today = tech.post("/api/v1/orders/", api_body(sites["a"], "2026-03-02"), format="json")
        assert born_today.status_code == 201, born_today.json()
        tomorrow = tech.post("/api/v1/orders/", api_body(sites["a"], "2026-03-03"), format="json")
        assert tomorrow.status_code == 400


def test_a_correction_to_a_birth_date_in_the_future_is_refused(sites):
    from archive.actions import do_correct_patient_demographics

    from .conftest import make_patient

    patient = make_patient(sites["a"].institution, "LIU^YANG", patient_id="RCH-5", birth_date=dt.date(1990, 1, 1))
    with pytest.raises(ValueError, match="in the future"):
        do_correct_patient_demographics(patient, birth_date=today() + dt.timedelta(days=1), reason="typo")
    patient.refresh_from_db()
    assert patient.birth_date == dt.date(1990, 1, 1)
