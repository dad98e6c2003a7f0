"""The demo's procedure catalogue, modality stations and today's orders (DESIGN.md, fixed points)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from django.db import transaction
from django.utils import timezone

from archive.models import DicomNode, Patient
from pacs_cloud.models import Institution, User

from . import actions
from .models import Order, Procedure, Station

CATALOGUE = {
    # code, name, modality, body part, minutes
    "riverside": [
        ("CT-HEAD", "CT head without contrast", "CT", "HEAD", 10),
        ("CT-CHEST", "CT chest without contrast", "CT", "CHEST", 15),
        ("CT-CHEST-C", "CT chest with contrast", "CT", "CHEST", 20),
        ("CT-ABD", "CT abdomen and pelvis with contrast", "CT", "ABDOMEN", 20),
        ("CTA-HEAD", "CT angiography head and neck", "CT", "HEAD", 25),
    ],
    "hillside": [
        ("MR-BRAIN", "MR brain without contrast", "MR", "BRAIN", 30),
        ("MR-LSPINE", "MR lumbar spine", "MR", "LSPINE", 30),
        ("MR-KNEE", "MR knee", "MR", "KNEE", 30),
        ("MR-ABD", "MR abdomen with contrast", "MR", "ABDOMEN", 45),
    ],
}
STATIONS = [
    # institution, AE title, station name, modality, location, description
    ("riverside", "RIVERSIDE_CT", "RCH CT 1", "CT", "Radiology L1", "Riverside CT scanner"),
    ("hillside", "HILLSIDE_MR", "HTH MR 1", "MR", "Imaging wing", "Hillside MR scanner"),
]

PATIENTS = {
    # patient ID, PN (alphabetic=ideographic), birth date, sex
    "riverside": [
        ("RCH-100231", "WANG^XIAOMING=王^小明", dt.date(1968, 3, 14), "M"),
        ("RCH-100232", "LI^NA=李^娜", dt.date(1975, 11, 2), "F"),
        ("RCH-100233", "ZHANG^WEI=张^伟", dt.date(1990, 6, 21), "M"),
        ("RCH-100234", "CHEN^JING=陈^静", dt.date(1983, 9, 9), "F"),
    ],
    "hillside": [
        ("HTH-200101", "LIU^YANG=刘^洋", dt.date(1979, 1, 30), "M"),
        ("HTH-200102", "ZHAO^MIN=赵^敏", dt.date(1962, 7, 8), "F"),
        ("HTH-200103", "SUN^LEI=孙^磊", dt.date(2001, 4, 17), "M"),
    ],
}

ORDERS = {
    # patient ID, procedure code, local time, priority, referring physician, clinical information
    "riverside": [
        (
            "RCH-100231",
            "CT-CHEST",
            dt.time(9, 0),
            "routine",
            "HUANG^LEI=黄^磊",
            "Persistent cough for 6 weeks; smoker.",
        ),
        (
            "RCH-100232",
            "CT-HEAD",
            dt.time(10, 30),
            "stat",
            "HUANG^LEI=黄^磊",
            "Sudden severe headache, rule out bleed.",
        ),
        ("RCH-100233", "CT-ABD", dt.time(13, 0), "urgent", "HUANG^LEI=黄^磊", "Right lower quadrant pain, fever."),
        ("RCH-100234", "CT-CHEST-C", dt.time(15, 30), "routine", "HUANG^LEI=黄^磊", "Follow-up of a lung nodule."),
    ],
    "hillside": [
        (
            "HTH-200101",
            "MR-LSPINE",
            dt.time(9, 30),
            "routine",
            "ZHOU^MIN=周^敏",
            "Low back pain radiating to the left leg.",
        ),
        ("HTH-200102", "MR-BRAIN", dt.time(11, 0), "urgent", "ZHOU^MIN=周^敏", "New-onset seizures."),
        (
            "HTH-200103",
            "MR-KNEE",
            dt.time(14, 0),
            "routine",
            "ZHOU^MIN=周^敏",
            "Twisting injury, suspected meniscal tear.",
        ),
    ],
}
TECHNOLOGISTS = {"riverside": "tech@riverside", "hillside": "tech@hillside"}


def _station(
    institution: Institution, ae_title: str, name: str, modality: str, location: str, description: str
) -> Station:
    # The archive's demo may already have made the node; either way it is the same row.
    node, _ = DicomNode.objects.get_or_create(
        ae_title=ae_title, defaults={"institution": institution, "host": "127.0.0.1", "description": description}
    )
    station, _ = Station.objects.update_or_create(
        node=node,
        defaults={"institution": institution, "name": name, "modality": modality, "location": location},
    )
    return station


@transaction.atomic
def seed() -> list[str] | None:
    """Create the catalogue and stations, and today's orders if today has none yet."""
    lines = []
    for slug, entries in CATALOGUE.items():
        institution = Institution.objects.get(slug=slug)
        for code, name, modality, body_part, minutes in entries:
            Procedure.objects.update_or_create(
                institution=institution,
                code=code,
                defaults={"name": name, "modality": modality, "body_part": body_part, "duration_minutes": minutes},
            )
    stations = {}
    for slug, ae_title, name, modality, location, description in STATIONS:
        institution = Institution.objects.get(slug=slug)
        stations[slug] = _station(institution, ae_title, name, modality, location, description)
    for slug, exams in ORDERS.items():
        institution = Institution.objects.get(slug=slug)
        today = timezone.now().astimezone(ZoneInfo(institution.time_zone)).date()
        if Order.objects.filter(institution=institution, scheduled_date=today).exists():
            continue
        technologist = User.objects.filter(username=TECHNOLOGISTS[slug]).first()
        patients = {}
        for patient_id, name, birth_date, sex in PATIENTS[slug]:
            patients[patient_id] = Patient.objects.filter(institution=institution, patient_id=patient_id).first() or (
                actions.do_register_patient(
                    institution,
                    name=name,
                    patient_id=patient_id,
                    birth_date=birth_date,
                    sex=sex,
                    actor=technologist,
                    allow_possible_duplicate=True,
                )
            )
        for patient_id, code, at, priority, referrer, info in exams:
            actions.do_create_order(
                institution,
                patient=patients[patient_id],
                procedure=Procedure.objects.get(institution=institution, code=code),
                station=stations[slug],
                scheduled_at=dt.datetime.combine(today, at, tzinfo=ZoneInfo(institution.time_zone)),
                priority=priority,
                referring_physician=referrer,
                clinical_info=info,
                actor=technologist,
            )
        lines.append(f"{'':18} {len(exams)} exams scheduled today on {stations[slug].node.ae_title}")
    return lines or None
