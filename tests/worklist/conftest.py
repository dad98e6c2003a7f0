"""Worklist fixtures: a small catalogue, stations and orders for tenants a and b."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest

from archive.models import DicomNode, Patient
from pacs_cloud.models import Institution
from worklist import actions
from worklist.models import Order, Procedure, Station

SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass
class Site:
    institution: Institution
    ct: Procedure
    mr: Procedure
    ct_station: Station
    mr_station: Station


def make_site(institution: Institution, tag: str) -> Site:
    ct = Procedure.objects.create(
        institution=institution,
        code="CTCHEST",
        name="CT chest without contrast",
        modality="CT",
        body_part="CHEST",
        duration_minutes=20,
    )
    mr = Procedure.objects.create(
        institution=institution, code="MRBRAIN", name="MR brain", modality="MR", body_part="HEAD", duration_minutes=40
    )
    ct_node = DicomNode.objects.create(institution=institution, ae_title=f"{tag}_CT", host="127.0.0.1")
    mr_node = DicomNode.objects.create(institution=institution, ae_title=f"{tag}_MR", host="127.0.0.1")
    ct_station = Station.objects.create(institution=institution, node=ct_node, name=f"{tag} CT 1", modality="CT")
    mr_station = Station.objects.create(institution=institution, node=mr_node, name=f"{tag} MR 1", modality="MR")
    return Site(institution, ct, mr, ct_station, mr_station)


@pytest.fixture
def sites(tenants):
    return {"a": make_site(tenants.a.institution, "ALPHA"), "b": make_site(tenants.b.institution, "BRAVO")}


def local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=SHANGHAI)


def today() -> dt.date:
    return dt.datetime.now(SHANGHAI).date()


def make_patient(institution: Institution, name: str, patient_id: str = "", **fields) -> Patient:
    return actions.do_register_patient(
        institution, name=name, patient_id=patient_id, allow_possible_duplicate=True, **fields
    )


def make_order(
    site: Site, patient: Patient, *, modality: str = "CT", when: dt.datetime | None = None, **fields
) -> Order:
    procedure = site.ct if modality == "CT" else site.mr
    station = site.ct_station if modality == "CT" else site.mr_station
    return actions.do_create_order(
        site.institution,
        patient=patient,
        procedure=procedure,
        station=station,
        scheduled_at=when or local(today(), 10),
        **fields,
    )


@pytest.fixture
def order_factory(sites):
    counter = iter(range(10_000))

    def make(site: str = "a", name: str = "DOE^JANE", **fields) -> Order:
        patient = make_patient(sites[site].institution, name, patient_id=f"P{next(counter):05d}")
        return make_order(sites[site], patient, **fields)

    return make
