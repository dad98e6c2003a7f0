"""The template offered first is the exam's procedure's, not only what the images' headers say."""

from __future__ import annotations

from archive.models import Series, Study
from reports.actions import templates_for
from reports.models import ReportTemplate
from tests.conftest import api_client


def template(institution, name: str, **fields) -> ReportTemplate:
    return ReportTemplate.objects.create(institution=institution, name=name, sections={}, **fields)


def names(study: Study) -> list[str]:
    return [t.name for t in templates_for(Study.objects.get(pk=study.pk))]


def test_the_orders_procedure_chooses_the_template(reading):
    # The order is "CT chest without contrast" (CTCHEST, body part CHEST); the image names no body part.
    institution = reading.study.institution
    template(institution, "CT chest protocol", modality="CT", procedure_code="ctchest")
    template(institution, "Chest", body_part="CHEST")
    template(institution, "Head", modality="CT", body_part="HEAD")
    template(institution, "Brain MR protocol", procedure_code="MRBRAIN")
    assert names(reading.study) == ["CT chest protocol", "Chest", "CT chest"]


def test_the_orders_body_part_wins_over_the_images(reading):
    Series.objects.filter(study=reading.study).update(body_part="HEAD")  # e.g. the scout's
    institution = reading.study.institution
    template(institution, "Chest", body_part="CHEST")
    template(institution, "Head", modality="CT", body_part="HEAD")
    assert names(reading.study) == ["Chest", "CT chest"]
    client = api_client(reading.tenant.radiologist)
    offered = client.get(f"/api/v1/report-templates/?study={reading.study.pk}").json()["results"]
    assert {t["name"] for t in offered} == {"Chest", "CT chest"}


def test_a_study_without_an_order_is_matched_on_its_images(reading):
    reading.order.study = None
    type(reading.order).objects.filter(pk=reading.order.pk).update(study=None)
    Series.objects.filter(study=reading.study).update(body_part="HEAD")
    institution = reading.study.institution
    template(institution, "CT chest protocol", modality="CT", procedure_code="CTCHEST")
    template(institution, "Chest", body_part="CHEST")
    template(institution, "Head", modality="CT", body_part="HEAD")
    assert names(reading.study) == ["Head", "CT chest"]


def test_the_readers_home_preselects_the_procedures_template(client, reading):
    template(reading.study.institution, "Chest", body_part="CHEST")
    client.force_login(reading.tenant.radiologist)
    page = client.get("/").content.decode()
    picker = page[page.index("No template</option>") :]
    assert picker.index("selected>Chest</option>") < picker.index(">CT chest</option>")
