"""Builders for referral tests: real archived studies, referrals moved along their state machine."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import pytest

from archive.ingest import store_instance
from tests.isolation.conftest import registry, world  # noqa: F401 (the harness's fixtures, for test_isolation_grants)
from tests.samples import store_sample_study
from tests.viewer.phantom import ct_datasets
from workflow.referrals import actions
from workflow.referrals.models import Referral


@pytest.fixture(autouse=True)
def _storage(tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"


def archived_study(institution, *, patient_id: str = "", patient_name: str = "", description: str = "CT HEAD"):
    """One CT image archived through the ingest service; a new patient unless ``patient_id`` is known."""
    token = secrets.token_hex(3)
    return store_sample_study(
        institution,
        patient_name=patient_name or f"Referred{token}^Pat",
        patient_id=patient_id or f"RP-{token}",
        accession=f"R{token}",
        description=description,
    ).study


def draft(tenants, study, **fields) -> Referral:
    """A draft referral of ``study``'s patient from institution a to b, the study attached."""
    a, b = tenants.a, tenants.b
    return actions.do_create_referral(
        acting_user=a.referral_coordinator,
        from_institution=a.institution,
        to_institution=b.institution,
        patient=study.patient,
        reason=fields.pop("reason", "Suspected subdural haematoma: neurosurgical opinion"),
        clinical_summary=fields.pop("clinical_summary", "Fall at home, GCS 14."),
        studies=[study],
        **fields,
    )


def sent(tenants, study, **fields) -> Referral:
    referral = draft(tenants, study, **fields)
    actions.do_record_consent(referral, acting_user=tenants.a.referral_coordinator, method="written")
    return actions.do_send_referral(referral, acting_user=tenants.a.referral_coordinator)


def archived_ct(institution, *, patient_name: str, patient_id: str, description: str, slices: int):
    """A small multi-slice CT (a phantom) archived through the ingest service, for the viewer in browser tests."""
    datasets, _ = ct_datasets(size=64, slices=slices)
    with tempfile.TemporaryDirectory() as folder:
        for ds in datasets:
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.IssuerOfPatientID = institution.patient_id_issuer
            ds.StudyDescription = description
            path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            instance = store_instance(path, institution=institution).instance
    return instance.series.study
