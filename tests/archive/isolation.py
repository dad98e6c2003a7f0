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


@isolation.factory
def dicom_node_and_conflict(tenant):
    """A configured DICOM node, and an object kept aside as a conflict with the archived image."""
    import tempfile
    from pathlib import Path

    import pydicom

    from archive.ingest import IngestError, store_instance
    from archive.models import DicomNode, IngestConflict, Instance
    from archive.storage import get_storage

    token = secrets.token_hex(3).upper()
    node = DicomNode.objects.create(
        institution=tenant.institution, ae_title=f"NODE{token}", host="10.9.8.7", description=f"Secret{token} scanner"
    )
    instance = Instance.objects.get(sop_instance_uid=tenant.made["instance.uid"])
    with get_storage().open(instance.storage_key) as handle:
        ds = pydicom.dcmread(handle)
    ds.SeriesDescription = f"RESENT {token}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "changed.dcm"
        ds.save_as(path, enforce_file_format=True)
        try:
            store_instance(path, institution=tenant.institution)
        except IngestError:
            pass
    conflict = IngestConflict.objects.get(institution=tenant.institution, sop_instance_uid=instance.sop_instance_uid)
    return isolation.Made(
        values={"dicom_node.id": node.pk, "conflict.id": conflict.pk},
        secrets=[node.ae_title, node.description],
    )


# Our own resources, by opaque id.
isolation.route("/api/v1/studies/{pk}/", pk="study.id")
isolation.route(
    "/api/v1/dicom-nodes/",
    bodies={"post": {"institution": isolation.Ref("institution.id"), "ae_title": "INTRUDER"}},
    also_allowed={400},
)
isolation.route(
    "/api/v1/dicom-nodes/{pk}/",
    pk="dicom_node.id",
    bodies={
        "put": {"institution": isolation.Ref("institution.id"), "ae_title": "TAKEN"},
        "patch": {"is_active": False},
    },
)
isolation.route("/api/v1/ingest-conflicts/{pk}/", pk="conflict.id")
isolation.route("/api/v1/ingest-conflicts/{pk}/resolve/", pk="conflict.id", bodies={"post": {"keep": "new"}})
isolation.route(
    "/archive/dicom-nodes/{pk}/",
    pk="dicom_node.id",
    bodies={"post": isolation.Form({"ae_title": "TAKEN", "is_active": "on"})},
)
# DICOMweb parameters that are not objects.
isolation.route(
    "/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/{frames}",
    frames=isolation.const("1"),
)
isolation.route(
    "/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/bulk/{path}",
    path=isolation.const("7FE00010"),
)
# QIDO-RS searches naming another institution's patient or study find nothing.
isolation.route(
    "/dicomweb/studies", queries=[{"PatientID": isolation.Ref("patient.patient_id")}], also_allowed={400, 415}
)
isolation.route("/dicomweb/series", queries=[{"StudyInstanceUID": isolation.Ref("study.uid")}])
isolation.route("/dicomweb/instances", queries=[{"SeriesInstanceUID": isolation.Ref("series.uid")}])
# STOW-RS into /studies/{uid}: stores for the caller's own institution (UIDs are
# per institution) and refuses a body that is not multipart/related alike for
# any UID, so no object of another institution is looked up.
isolation.route("/dicomweb/studies/{study_uid}", also_allowed={400, 415})


# Break-glass: each institution's clinician has broken glass on a study of a
# partner hospital that allows it (none of the three allows another), with a
# reason only their institution's and the partner's administrators may read.
@isolation.factory
def break_glass_access(tenant):
    from archive.breakglass.actions import do_allow_break_glass, do_break_glass
    from archive.models import Patient, Study
    from pacs_cloud.lib.uids import new_uid
    from pacs_cloud.models import Institution

    token = secrets.token_hex(4)
    slug = tenant.institution.slug
    partner = Institution.objects.create(
        slug=f"{slug}-partner", name=f"Partner of {slug}", accession_prefix="P", patient_id_issuer=f"P{slug}"
    )
    do_allow_break_glass(partner, tenant.institution, acting_user=tenant.institution_admin)
    patient = Patient.objects.create(institution=partner, patient_id=f"PB-{token}", name=f"Glass{token}^X")
    study = Study.objects.create(institution=partner, patient=patient, study_instance_uid=new_uid())
    do_break_glass(tenant.clinician, study.study_instance_uid, reason=f"Emergency{token} chest pain")
    return isolation.Made(secrets=[f"Emergency{token}", f"Glass{token}", f"PB-{token}"])


# Breaking glass on another institution's study (it allows nobody) is refused alike for a missing one.
isolation.route(
    "/api/v1/break-glass/",
    bodies={"post": {"study_instance_uid": isolation.Ref("study.uid"), "reason": "intruder wants to look"}},
)
isolation.route(
    "/break-glass/",
    bodies={
        "post": isolation.Form({"study_instance_uid": isolation.Ref("study.uid"), "reason": "intruder wants to look"})
    },
)


@isolation.factory
def prior_rule_and_prior(tenant):
    """A prior rule, and an earlier head CT of the archived study's patient (its relevant prior)."""
    import datetime as dt

    from archive.models import Series, Study
    from archive.priors.actions import do_save_prior_rule

    token = secrets.token_hex(4)
    rule = do_save_prior_rule(
        institution=tenant.institution,
        acting_user=tenant.institution_admin,
        name=f"Secret{token} head rule",
        modality="CT",
        years=30,
    )
    current = Study.objects.get(pk=tenant.made["study.id"])
    prior = Study.objects.create(
        institution=tenant.institution,
        patient_id=current.patient_id,
        study_instance_uid=f"{current.study_instance_uid}.9",
        study_date=(current.study_date or dt.date(2004, 1, 19)) - dt.timedelta(days=400),
        accession_number=f"PRI{token}",
        modalities="CT",
        description=f"CT HEAD prior {token}",
    )
    Series.objects.create(study=prior, series_instance_uid=f"{prior.study_instance_uid}.1", modality="CT")
    return isolation.Made(
        values={"prior_rule.id": rule.pk, "prior.id": prior.pk}, secrets=[rule.name, prior.accession_number]
    )


isolation.route("/api/v1/studies/{pk}/priors/", pk="study.id")
isolation.route(
    "/api/v1/prior-rules/",
    bodies={"post": {"institution": isolation.Ref("institution.id"), "name": "INTRUDER"}},
    also_allowed={400},
)
isolation.route(
    "/api/v1/prior-rules/{pk}/",
    pk="prior_rule.id",
    bodies={"put": {"institution": isolation.Ref("institution.id"), "name": "TAKEN"}, "patch": {"years": 1}},
)
isolation.route(
    "/archive/prior-rules/{pk}/",
    pk="prior_rule.id",
    bodies={"post": isolation.Form({"name": "TAKEN", "years": "1", "max_priors": "1", "modality_match": "any"})},
)
