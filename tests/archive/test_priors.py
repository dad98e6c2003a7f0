"""Relevant priors: which earlier studies count, the institution's rules, and their API and page."""

from __future__ import annotations

import itertools
from datetime import date, time

from archive.models import Patient, Series, Study
from archive.priors.actions import do_save_prior_rule
from archive.priors.models import PriorRule
from archive.priors.selection import regions_of, select_priors
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, web_client

_counter = itertools.count(1)


def patient_at(institution, name: str = "张三") -> Patient:
    n = next(_counter)
    return Patient.objects.create(institution=institution, patient_id=f"PRI{n:05d}", name=name)


def study_of(patient, day: date, modality: str = "CT", body_part: str = "HEAD", **fields) -> Study:
    n = next(_counter)
    study = Study.objects.create(
        institution_id=patient.institution_id,
        patient=patient,
        study_instance_uid=f"1.2.826.0.1.3680043.10.15.{n}",
        study_date=day,
        accession_number=f"PR{n}",
        modalities=modality,
        description=fields.pop("description", f"{modality} {body_part}"),
        **fields,
    )
    Series.objects.create(
        study=study, series_instance_uid=f"{study.study_instance_uid}.1", modality=modality, body_part=body_part
    )
    return study


def test_priors_are_the_same_patients_earlier_studies_of_the_region_newest_first(tenants):
    patient = patient_at(tenants.a.institution)
    old = study_of(patient, date(2023, 5, 1))
    newer = study_of(patient, date(2025, 3, 14))
    study_of(patient, date(2025, 6, 1), "MR", "KNEE")  # another region
    study_of(patient, date(2024, 1, 1), "US", "HEAD")  # an unrelated modality
    later = study_of(patient, date(2026, 12, 1))
    current = study_of(patient, date(2026, 11, 2))
    study_of(patient_at(tenants.a.institution), date(2025, 1, 1))  # another patient
    assert select_priors(current) == [newer, old]
    assert later not in select_priors(current)


def test_related_modalities_count_by_default_and_same_only_when_a_rule_says(tenants):
    patient = patient_at(tenants.a.institution)
    pet = study_of(patient, date(2025, 1, 1), "PT", "CHEST")
    ct = study_of(patient, date(2024, 1, 1), "CT", "CHEST")
    current = study_of(patient, date(2026, 1, 1), "CT", "THORAX")
    assert select_priors(current) == [pet, ct]
    do_save_prior_rule(
        institution=tenants.a.institution,
        acting_user=tenants.a.institution_admin,
        name="CT chest: CT only",
        modality="CT",
        body_region="CHEST",
        modality_match="same",
    )
    assert select_priors(current) == [ct]


def test_a_rule_limits_years_and_count_and_the_first_matching_rule_wins(tenants):
    patient = patient_at(tenants.a.institution)
    studies = [study_of(patient, date(2026 - years, 3, 1)) for years in range(1, 9)]
    current = study_of(patient, date(2026, 11, 2))
    assert select_priors(current) == studies[:3]  # defaults: 5 years, at most 3
    admin = tenants.a.institution_admin
    do_save_prior_rule(institution=tenants.a.institution, acting_user=admin, name="MR", modality="MR", max_priors=1)
    do_save_prior_rule(
        institution=tenants.a.institution, acting_user=admin, name="Head", body_region="HEAD", years=3, max_priors=10
    )
    do_save_prior_rule(institution=tenants.a.institution, acting_user=admin, name="All", position=5, max_priors=8)
    # "Head": within 3 years of 2026-11-02, so March 2025 and 2024 but not 2023.
    assert select_priors(current) == studies[:2]
    PriorRule.objects.filter(name="Head").update(is_active=False)
    assert select_priors(current) == studies[:4]  # "All": 5 years, up to 8


def test_same_day_studies_count_when_earlier_and_undated_studies_never(tenants):
    patient = patient_at(tenants.a.institution)
    morning = study_of(patient, date(2026, 11, 2), study_time=time(8, 0))
    study_of(patient, date(2026, 11, 2), study_time=time(18, 0))
    undated = study_of(patient, date(2020, 1, 1))
    Study.objects.filter(pk=undated.pk).update(study_date=None)
    current = study_of(patient, date(2026, 11, 2), study_time=time(12, 0))
    assert select_priors(current) == [morning]
    Study.objects.filter(pk=current.pk).update(study_date=None)
    current.refresh_from_db()
    assert select_priors(current) == []


def test_regions_come_from_body_part_or_description():
    assert regions_of(["BRAIN"]) == {"HEAD"}
    assert regions_of(["ABDOMENPELVIS"]) == {"ABDOMEN", "PELVIS"}
    assert regions_of([""], "CT 胸部 平扫") == {"CHEST"}
    assert regions_of([], "MR L-SPINE") == {"SPINE"}
    assert regions_of([], "Outside consult") == set()
    assert regions_of(["LSPINE"]) == {"SPINE"}


def test_a_study_whose_region_is_unknown_is_compared_by_modality(tenants):
    patient = patient_at(tenants.a.institution)
    prior = study_of(patient, date(2025, 1, 1), "CT", "KNEE")
    current = study_of(patient, date(2026, 1, 1), "CT", "", description="Outside CT")
    assert select_priors(current) == [prior]


def test_institution_admins_edit_their_rules_through_the_api_and_it_is_audited(tenants):
    admin = api_client(tenants.a.institution_admin)
    created = admin.post(
        "/api/v1/prior-rules/",
        {"institution": str(tenants.a.institution.pk), "name": "Chest CT", "modality": "ct", "body_region": "chest"},
        format="json",
    )
    assert created.status_code == 201, created.content
    rule = created.json()
    assert (rule["modality"], rule["body_region"], rule["years"], rule["max_priors"]) == ("CT", "CHEST", 5, 3)
    changed = admin.patch(f"/api/v1/prior-rules/{rule['id']}/", {"years": 2}, format="json")
    assert changed.status_code == 200 and changed.json()["years"] == 2
    assert AuditEvent.objects.filter(action="archive.priorrule.change", object_id=rule["id"]).exists()
    for field, value in (("body_region", "ELBOWS"), ("years", 0), ("modality_match", "some")):
        bad = admin.post(
            "/api/v1/prior-rules/",
            {"institution": str(tenants.a.institution.pk), "name": "x", field: value},
            format="json",
        )
        assert bad.status_code == 400 and field in bad.json(), bad.content
    # Another institution's admin neither sees nor writes it; a radiologist has no rule API at all.
    other = api_client(tenants.b.institution_admin)
    assert other.get("/api/v1/prior-rules/").json()["results"] == []
    assert other.patch(f"/api/v1/prior-rules/{rule['id']}/", {"years": 9}, format="json").status_code == 404
    assert (
        other.post(
            "/api/v1/prior-rules/", {"institution": str(tenants.a.institution.pk), "name": "x"}, format="json"
        ).status_code
        == 400
    )
    assert api_client(tenants.a.radiologist).get("/api/v1/prior-rules/").status_code == 403
    assert admin.delete(f"/api/v1/prior-rules/{rule['id']}/").status_code == 204
    assert not PriorRule.objects.exists()


def test_the_admin_page_adds_and_edits_rules(tenants):
    client = web_client(tenants.a.institution_admin)
    page = client.get("/archive/prior-rules/")
    assert page.status_code == 200 and "the defaults apply" in page.content.decode()
    added = client.post(
        "/archive/prior-rules/",
        {"name": "头颅 CT", "position": 1, "modality": "CT", "body_region": "HEAD", "modality_match": "same",
         "same_region": "on", "years": 4, "max_priors": 2, "is_active": "on"},
    )  # fmt: skip
    assert added.status_code == 302
    rule = PriorRule.objects.get(institution=tenants.a.institution)
    assert (rule.name, rule.years, rule.max_priors) == ("头颅 CT", 4, 2)
    assert "头颅 CT" in client.get("/archive/prior-rules/").content.decode()
    edited = client.post(f"/archive/prior-rules/{rule.pk}/", {**{"name": "头颅 CT", "position": 1, "modality": "CT",
        "body_region": "HEAD", "modality_match": "related", "years": 4, "max_priors": 2}})  # fmt: skip
    assert edited.status_code == 302
    rule.refresh_from_db()
    assert rule.modality_match == "related" and not rule.same_region and not rule.is_active
    assert web_client(tenants.b.institution_admin).get(f"/archive/prior-rules/{rule.pk}/").status_code == 404
    assert web_client(tenants.a.radiologist).get("/archive/prior-rules/").status_code == 404
    assert client.post(f"/archive/prior-rules/{rule.pk}/", {"delete": "1"}).status_code == 302
    assert not PriorRule.objects.exists()
