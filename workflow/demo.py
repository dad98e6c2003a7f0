"""The demo's reading workflow (DESIGN.md, fixed points: demo).

The Expert Reading Centre's pool reads for Riverside, Hillside and Central,
with ``rad@expert`` a member; Riverside offers each study to its own
radiologists and the expert pool at once; Hillside sends everything to the
expert pool; Central reads its own by day and sends nights and weekends to
the pool. Idempotent: a policy is saved again only when it changed.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db import transaction

from pacs_cloud.models import Institution, Membership, Role, User

from .actions import current_policy, do_save_routing_policy
from .models import PoolMember, RadiologistPool, ReadingAgreement

POOL_NAME = "Expert Reading Centre pool"
HOSPITALS = ["riverside", "hillside", "central"]
SLA = {"stat": 60, "urgent": 240, "routine": 1440}


def _policies(pool_id: str) -> dict[str, tuple[str, dict]]:
    pool = {"kind": "pool", "pool": pool_id}
    return {
        "riverside": (
            "Own radiologists and the expert pool",
            {
                "rules": [
                    {
                        "name": "Stat studies",
                        "when": {"priorities": ["stat"]},
                        "offer_to": [{"kind": "own"}, pool],
                        "sla_minutes": {"stat": 30},
                        "escalation": [
                            {"offer_to": [{"kind": "person", "user": "rad@expert"}], "sla_minutes": {"stat": 15}}
                        ],
                    },
                    {
                        "name": "Every study",
                        "offer_to": [{"kind": "own"}, pool],
                        "escalation": [{"offer_to": [pool], "sla_minutes": {"urgent": 120, "routine": 480}}],
                    },
                ],
            },
        ),
        "hillside": (
            "Everything to the expert pool",
            {"rules": [{"name": "Every study", "offer_to": [pool]}]},
        ),
        "central": (
            "Nights and weekends to the expert pool",
            {
                "rules": [
                    {"name": "Nights", "when": {"hours": {"from": "20:00", "to": "08:00"}}, "offer_to": [pool]},
                    {"name": "Weekends", "when": {"weekdays": ["sat", "sun"]}, "offer_to": [pool]},
                    {
                        "name": "Mammography (double reading)",
                        "when": {"modalities": ["MG"]},
                        "offer_to": [{"kind": "own"}, pool],
                        "double_reading": True,
                    },
                ],
                "fallback": {"offer_to": [{"kind": "own"}], "escalation": [{"offer_to": [pool]}]},
            },
        ),
    }


@transaction.atomic
def seed() -> list[str]:
    institutions = {i.slug: i for i in Institution.objects.filter(slug__in=[*HOSPITALS, "expert"])}
    expert = institutions["expert"]
    pool, _ = RadiologistPool.objects.get_or_create(
        owner=expert,
        name=POOL_NAME,
        defaults={"description": "Subspecialty readers on call day and night for partner hospitals.", "claim_cap": 5},
    )
    reader = User.objects.get(username="rad@expert")
    member, _ = PoolMember.objects.get_or_create(
        pool=pool, user=reader, defaults={"subspecialties": ["neuro", "body", "breast"]}
    )
    member.credentialed_for.add(*(institutions[slug] for slug in HOSPITALS))
    for slug in HOSPITALS:
        ReadingAgreement.objects.get_or_create(
            hospital=institutions[slug], pool=pool, defaults={"sla_minutes": SLA, "valid_from": date(2024, 1, 1)}
        )
    admin = User.objects.filter(username="admin@riverside").first()
    lines = [f"{POOL_NAME}: rad@expert reads for Riverside, Hillside and Central"]
    for slug, (name, definition) in _policies(str(pool.pk)).items():
        institution = institutions[slug]
        current = current_policy(institution)
        if current is None or current.definition != definition or current.name != name:
            acting = (
                admin
                if admin
                and Membership.objects.filter(user=admin, institution=institution, role=Role.INSTITUTION_ADMIN).exists()
                else None
            )
            current = do_save_routing_policy(institution, definition, acting_user=acting, name=name, note="demo")
        lines.append(f"{institution.name} routing policy v{current.version}: {name}")
    return lines


# Referrals -------------------------------------------------------------------------

REFERRAL_PATIENT = ("RCH-100318", "WU^JIAN=吴^建", "19490730", "M")
REFERRAL_REASON = "Suspected acute subdural haematoma: neurosurgical assessment"


def _referral_ct(riverside: Institution, coordinator: User) -> Any:
    """Another Riverside patient's head CT, archived through the ingest service (idempotent)."""
    import tempfile
    from pathlib import Path

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from archive.ingest import Source, store_instance

    patient_id, name, birth, sex = REFERRAL_PATIENT
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, birth, sex
    ds.IssuerOfPatientID = riverside.patient_id_issuer
    ds.AccessionNumber = "RCHDEMO0318"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
    ds.BodyPartExamined = "HEAD"
    # Fixed UIDs: seeding again sends the identical object, which the archive recognises.
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cloud-pacs demo referral study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cloud-pacs demo referral series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=["cloud-pacs demo referral instance"]
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = store_instance(path, institution=riverside, source=Source("import", "demo", actor=coordinator))
    return result.instance.series.study


def seed_referral() -> list[str]:
    """Another Riverside patient's CT referred upward to Central City Hospital: sent, not yet accepted."""
    from .models import Referral
    from .referrals import do_create_referral, do_record_consent, do_send_referral

    riverside = Institution.objects.get(slug="riverside")
    central = Institution.objects.get(slug="central")
    coordinator = User.objects.get(username="coord@riverside")
    study = _referral_ct(riverside, coordinator)
    existing = Referral.objects.filter(patient=study.patient, to_institution=central).first()
    if existing is None:
        existing = do_create_referral(
            acting_user=coordinator,
            from_institution=riverside,
            to_institution=central,
            patient=study.patient,
            reason=REFERRAL_REASON,
            urgency=Referral.Urgency.URGENT,
            clinical_summary="76-year-old man on warfarin, fell at home this morning; GCS 14, headache, vomiting once.",
            studies=[study],
        )
        do_record_consent(
            existing, acting_user=coordinator, method=Referral.ConsentMethod.WRITTEN, note="signed by the patient"
        )
        existing = do_send_referral(existing, acting_user=coordinator, reason="bed requested by phone")
    return [
        f"Referral of {study.patient.patient_id} ({riverside.name} → {central.name}): {existing.state}; "
        "coord@central sees it in the inbox, doc@central opens the CT"
    ]
