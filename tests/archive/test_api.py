"""The archive's REST resources: studies, DICOM nodes, ingest conflicts; and patient corrections."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from archive.actions import do_correct_patient_demographics, do_link_study_to_patient, grant_study_view
from archive.ingest import IngestError, store_instance
from archive.models import DicomNode, IngestConflict, Patient, Study
from archive.storage import get_storage
from pacs_cloud.fsm import history
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import make_ct, write
from tests.conftest import api_client


@pytest.fixture
def studies(tenants, storage_dir, tmp_path):
    """Two studies at institution a, one at b."""
    made = []
    for index, (tenant, pid, date) in enumerate(
        [(tenants.a, "A1", "20240101"), (tenants.a, "A2", "20240301"), (tenants.b, "B1", "20240201")]
    ):
        ds = make_ct(patient_id=pid, patient_name=f"PATIENT^{pid}", study_date=date, accession=f"ACC{index}")
        store_instance(write(ds, tmp_path / f"{index}.dcm"), institution=tenant.institution)
        made.append(Study.objects.get(study_instance_uid=ds.StudyInstanceUID))
    return made


def test_the_study_list_shows_only_visible_studies_newest_first(tenants, studies):
    response = api_client(tenants.a.radiologist).get("/api/v1/studies/")
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [r["patient"]["patient_id"] for r in rows] == ["A2", "A1"]
    assert rows[0]["id"] == str(studies[1].pk)
    assert rows[0]["modalities"] == ["CT"]
    assert rows[0]["dicomweb_url"].endswith(f"/dicomweb/studies/{studies[1].study_instance_uid}")
    assert AuditEvent.objects.filter(action="archive.study.list").count() == 1


def test_the_study_list_costs_a_fixed_number_of_queries(tenants, studies, tmp_path):
    client = api_client(tenants.a.radiologist)
    client.get("/api/v1/studies/")  # the token's first use is recorded once
    with CaptureQueriesContext(connection) as few:
        client.get("/api/v1/studies/")
    for index in range(5):
        store_instance(
            write(make_ct(patient_id=f"MORE{index}"), tmp_path / f"m{index}.dcm"), institution=tenants.a.institution
        )
    with CaptureQueriesContext(connection) as many:
        client.get("/api/v1/studies/")
    assert len(many.captured_queries) == len(few.captured_queries)


def test_the_study_list_filters(tenants, studies):
    client = api_client(tenants.a.radiologist)
    assert [r["patient"]["patient_id"] for r in client.get("/api/v1/studies/?patient_id=A1").json()["results"]] == [
        "A1"
    ]
    assert len(client.get("/api/v1/studies/?date_from=2024-02-01").json()["results"]) == 1
    assert len(client.get("/api/v1/studies/?patient_name=patient").json()["results"]) == 2
    assert client.get("/api/v1/studies/?date_from=yesterday").status_code == 400


def test_a_study_of_another_institution_is_404_until_shared(tenants, studies):
    foreign = studies[2]
    client = api_client(tenants.a.radiologist)
    assert client.get(f"/api/v1/studies/{foreign.pk}/").status_code == 404
    assert client.get("/api/v1/studies/not-a-uuid/").status_code == 404
    grant_study_view(foreign, user=tenants.a.radiologist)
    response = client.get(f"/api/v1/studies/{foreign.pk}/")
    assert response.status_code == 200
    assert response.json()["series"][0]["modality"] == "CT"
    assert AuditEvent.objects.filter(action="archive.study.view", object_id=str(foreign.pk)).count() == 1


def test_an_institution_admin_alone_sees_no_studies(tenants, studies):
    assert api_client(tenants.a.institution_admin).get("/api/v1/studies/").status_code == 403


# DICOM nodes -----------------------------------------------------------------------


def test_institution_admins_configure_their_dicom_nodes(tenants, db):
    admin = api_client(tenants.a.institution_admin)
    created = admin.post(
        "/api/v1/dicom-nodes/",
        {"institution": str(tenants.a.institution.pk), "ae_title": "ALPHA_MR", "host": "10.0.0.5", "port": 104},
        format="json",
    )
    assert created.status_code == 201, created.content
    node = DicomNode.objects.get(ae_title="ALPHA_MR")
    assert node.institution == tenants.a.institution
    assert admin.patch(f"/api/v1/dicom-nodes/{node.pk}/", {"is_active": False}, format="json").status_code == 200
    node.refresh_from_db()
    assert not node.is_active
    assert AuditEvent.objects.filter(action__startswith="archive.dicomnode").count() == 2
    # Another institution's admin neither sees nor touches it; a technologist may not configure nodes.
    other = api_client(tenants.b.institution_admin)
    assert other.get("/api/v1/dicom-nodes/").json()["results"] == []
    assert other.delete(f"/api/v1/dicom-nodes/{node.pk}/").status_code == 404
    assert api_client(tenants.a.technologist).get("/api/v1/dicom-nodes/").status_code == 403
    foreign = other.post(
        "/api/v1/dicom-nodes/", {"institution": str(tenants.a.institution.pk), "ae_title": "SNEAKY"}, format="json"
    )
    assert foreign.status_code == 400
    duplicate = admin.post(
        "/api/v1/dicom-nodes/", {"institution": str(tenants.a.institution.pk), "ae_title": "ALPHA_MR"}, format="json"
    )
    assert duplicate.status_code == 400
    bad_title = admin.post(
        "/api/v1/dicom-nodes/", {"institution": str(tenants.a.institution.pk), "ae_title": "BACK\\SLASH"}, format="json"
    )
    assert bad_title.status_code == 400
    assert admin.delete(f"/api/v1/dicom-nodes/{node.pk}/").status_code == 204


# Conflicts and corrections ---------------------------------------------------------------


def test_a_conflict_is_reviewed_by_an_institution_admin(tenants, storage_dir, tmp_path):
    ds = make_ct()
    archived = store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution).instance
    ds.SeriesDescription = "RESENT WITH CHANGES"
    with pytest.raises(IngestError):
        store_instance(write(ds, tmp_path / "b.dcm"), institution=tenants.a.institution)
    admin = api_client(tenants.a.institution_admin)
    (row,) = admin.get("/api/v1/ingest-conflicts/?status=open").json()["results"]
    assert row["sop_instance_uid"] == ds.SOPInstanceUID
    assert api_client(tenants.b.institution_admin).get("/api/v1/ingest-conflicts/").json()["results"] == []
    response = admin.post(f"/api/v1/ingest-conflicts/{row['id']}/resolve/", {"keep": "new"}, format="json")
    assert response.status_code == 200
    archived.refresh_from_db()
    with get_storage().open(archived.storage_key) as handle:
        assert b"RESENT WITH CHANGES" in handle.read()
    conflict = IngestConflict.objects.get()
    assert conflict.status == "replaced"
    (transition,) = history(conflict)
    assert (transition.source, transition.target, transition.actor) == ("open", "replaced", tenants.a.institution_admin)
    assert AuditEvent.objects.filter(action="archive.ingestconflict.resolve", object_id=str(conflict.pk)).exists()
    with get_storage().open(conflict.storage_key) as handle:
        assert b"RESENT WITH CHANGES" not in handle.read()  # the old object is kept aside in its place


def test_correcting_a_patient_keeps_the_old_values_recognised(tenants, storage_dir, tmp_path):
    ds = make_ct(patient_id="TMP123", patient_name="UNKNOWN^TRAUMA", birth_date="19000101", sex="O")
    store_instance(write(ds, tmp_path / "a.dcm"), institution=tenants.a.institution)
    patient = Patient.objects.get(patient_id="TMP123")
    corrected = do_correct_patient_demographics(
        patient,
        acting_user=tenants.a.technologist,
        name="LI^MING=李^明",
        birth_date=dt.date(1985, 5, 6),
        sex="M",
        reason="identified",
    )
    assert corrected.name_ideographic == "李^明"
    study = Study.objects.get()
    assert study.header_overrides == {
        "PatientName": "LI^MING=李^明",
        "PatientBirthDate": "19850506",
        "PatientSex": "M",
    }
    event = AuditEvent.objects.get(action="archive.patient.correct")
    assert event.detail["changed"]["PatientSex"] == {"from": "O", "to": "M"}
    # The scanner still sends the temporary values for this study and for the next one.
    more = make_ct(study_uid=ds.StudyInstanceUID, patient_id="TMP123", patient_name="UNKNOWN^TRAUMA",
                   birth_date="19000101", sex="O", instance_number=2)  # fmt: skip
    assert store_instance(write(more, tmp_path / "b.dcm"), institution=tenants.a.institution).created
    nxt = make_ct(patient_id="TMP123", patient_name="UNKNOWN^TRAUMA", birth_date="19000101", sex="O")
    assert store_instance(write(nxt, tmp_path / "c.dcm"), institution=tenants.a.institution).created


def test_linking_a_study_to_another_patient(tenants, storage_dir, tmp_path):
    wrong = make_ct(patient_id="WRONG1", patient_name="WRONG^ID")
    right = make_ct(patient_id="RIGHT1", patient_name="RIGHT^ID", birth_date="19600202", sex="M")
    store_instance(write(wrong, tmp_path / "a.dcm"), institution=tenants.a.institution)
    store_instance(write(right, tmp_path / "b.dcm"), institution=tenants.a.institution)
    study = Study.objects.get(study_instance_uid=wrong.StudyInstanceUID)
    target = Patient.objects.get(patient_id="RIGHT1")
    do_link_study_to_patient(study, target, acting_user=tenants.a.technologist, reason="order reconciliation")
    study.refresh_from_db()
    assert study.patient == target
    assert study.header_overrides["PatientID"] == "RIGHT1"
    assert study.header_overrides["PatientName"] == "RIGHT^ID"
    assert AuditEvent.objects.filter(action="archive.study.relink").count() == 1
    with pytest.raises(ValueError):
        do_link_study_to_patient(study, Patient.objects.create(institution=tenants.b.institution, patient_id="X"))


def test_searches_see_exactly_what_the_access_policy_allows(tenants, studies):
    from django.contrib.auth.models import Group

    from archive import access
    from pacs_cloud.models import role_group_name

    foreign = studies[2]
    reader = tenants.a.radiologist
    assert set(access.searchable_studies(reader)) == set(access.visible_studies(reader)) == set(studies[:2])
    group, _ = Group.objects.get_or_create(name=role_group_name(tenants.a.institution, "radiologist"))
    group.user_set.add(reader)
    grant_study_view(foreign, groups=[group])
    assert set(access.searchable_studies(reader)) == set(access.visible_studies(reader)) == set(studies)
    outsider = tenants.c.radiologist
    assert not access.searchable_studies(outsider).exists()
    assert not access.searchable_studies(tenants.a.institution_admin).exists()
