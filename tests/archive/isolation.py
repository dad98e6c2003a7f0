"""Isolation harness registrations of the archive: patients, studies, series, instances."""

import secrets

from tests import isolation
from tests.samples import store_sample_study


@isolation.factory
def archived_study(tenant):
    """One CT image archived through the real ingest service, with a patient only this institution knows."""
    token = secrets.token_hex(4)
    family = f"Secret{token}"
    made = store_sample_study(
        tenant.institution,
        patient_name=f"{family}^{tenant.institution.slug.upper()}",
        patient_id=f"PID-{token}",
        accession=f"ACC{token}",
        description=f"CT HEAD {token}",
    )
    return isolation.Made(
        values={
            "patient.id": made.study.patient_id,
            "patient.patient_id": made.patient_id,
            "study.id": made.study.pk,
            "study.uid": made.study.study_instance_uid,
            "series.id": made.series.pk,
            "series.uid": made.series.series_instance_uid,
            "instance.id": made.instance.pk,
            "instance.uid": made.instance.sop_instance_uid,
        },
        secrets=[family, made.patient_id, made.accession],
    )


# Parameter names that mean the same everywhere (DICOMweb puts UIDs in paths,
# PS3.18 §10.4; our own pages use opaque ids).
isolation.param("study_uid", "study.uid")
isolation.param("series_uid", "series.uid")
isolation.param("instance_uid", "instance.uid")
isolation.param("sop_uid", "instance.uid")
isolation.param("study_id", "study.id")
isolation.param("series_id", "series.id")
isolation.param("instance_id", "instance.id")
