"""Small builders for workflow tests: studies without pixel data, a reading centre with a pool."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date

import pytest

from archive.models import Patient, Series, Study
from pacs_cloud.models import Institution, Membership, Role, User
from tests.conftest import make_user
from workflow.actions import do_save_routing_policy
from workflow.models import PoolMember, RadiologistPool, ReadingAgreement

_counter = itertools.count(1)


def make_study(
    institution: Institution,
    *,
    modality: str = "CT",
    body_part: str = "HEAD",
    birth_date: date | None = date(1970, 5, 1),
    state: str = Study.State.COMPLETE,
    accession: str = "",
    patient_name: str = "DOE^JANE",
) -> Study:
    n = next(_counter)
    patient = Patient.objects.create(
        institution=institution, patient_id=f"P{n:06d}", name=patient_name, birth_date=birth_date
    )
    study = Study.objects.create(
        institution=institution,
        patient=patient,
        study_instance_uid=f"1.2.826.0.1.3680043.10.1.{n}",
        study_date=date(2026, 11, 2),
        accession_number=accession or f"ACC{n}",
        modalities=modality,
        description=f"{modality} {body_part}".strip(),
        state=state,
    )
    Series.objects.create(
        study=study,
        series_instance_uid=f"{study.study_instance_uid}.1",
        modality=modality,
        body_part=body_part,
        num_instances=10,
    )
    return study


def make_radiologist(institution: Institution, username: str) -> User:
    user = make_user(username)
    Membership.objects.create(user=user, institution=institution, role=Role.RADIOLOGIST)
    return user


@dataclass
class ReadingCentre:
    institution: Institution
    pool: RadiologistPool
    readers: list[User]
    agreement: ReadingAgreement


@pytest.fixture
def centre(tenants) -> ReadingCentre:
    """A reading centre whose pool of three reads for hospitals a and b (not c)."""
    inst = Institution.objects.create(
        slug="delta",
        name="Delta Reading Centre",
        kind=Institution.Kind.READING_CENTRE,
        accession_prefix="DRC",
        patient_id_issuer="DELTA",
        time_zone="Asia/Shanghai",
    )
    pool = RadiologistPool.objects.create(owner=inst, name="Delta night pool", claim_cap=3)
    readers = []
    for i, subs in enumerate([["neuro"], ["body"], ["neuro", "msk"]], start=1):
        user = make_radiologist(inst, f"reader{i}@delta")
        member = PoolMember.objects.create(pool=pool, user=user, subspecialties=subs)
        member.credentialed_for.set([tenants.a.institution, tenants.b.institution])
        readers.append(user)
    agreement = ReadingAgreement.objects.create(
        hospital=tenants.a.institution,
        pool=pool,
        sla_minutes={"stat": 30, "urgent": 120, "routine": 720},
        valid_from=date(2020, 1, 1),
    )
    ReadingAgreement.objects.create(hospital=tenants.b.institution, pool=pool, valid_from=date(2020, 1, 1))
    return ReadingCentre(inst, pool, readers, agreement)


def save_policy(institution: Institution, definition: dict, user: User | None = None):
    return do_save_routing_policy(institution, definition, acting_user=user)
