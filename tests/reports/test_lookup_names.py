"""The clinicians' lookup finds a Chinese patient by every form of the name a user types or copies from a page."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from reports.models import Report
from tests.conftest import api_client, web_client

from .conftest import make_reading, write_and_sign

PN = "ZHANG^SAN=张^三"


@pytest.fixture
def signed(tenants):
    report, _ = write_and_sign(make_reading(tenants.a, patient_name=PN), key_image=False)
    return report


def found(user, name: str) -> list[str]:
    body = api_client(user).get("/api/v1/reports/", {"patient_name": name}).json()
    return [row["id"] for row in body["results"]]


@pytest.mark.parametrize(
    "typed",
    [
        "张三",  # the full ideographic name
        "张",
        "ZHANG, SAN",  # as the pages show the Latin form
        "张三 (ZHANG, SAN)",  # the displayed name, pasted whole
        "zhang san",
        "ZHANGSAN",
        "ZHANG^SAN=张^三",
    ],
)
def test_the_lookup_finds_a_chinese_name_in_every_form(tenants, signed, typed):
    assert found(tenants.a.clinician, typed) == [str(signed.pk)]


@pytest.mark.parametrize("typed", ["张四", "李三", "ZHANG, SI", "三张", "李四 (LI, SI)"])
def test_the_lookup_does_not_find_another_name(tenants, signed, typed):
    assert found(tenants.a.clinician, typed) == []


def test_the_lookup_page_finds_the_full_ideographic_name(tenants, signed):
    client = web_client(tenants.a.clinician)
    assert f"/reports/{signed.pk}/" in client.get("/reports/", {"patient_name": "张三"}).content.decode()
    assert f"/reports/{signed.pk}/" not in client.get("/reports/", {"patient_name": "李四"}).content.decode()


def test_reports_signed_before_the_upgrade_are_found_by_the_ideographic_name(tenants, signed):
    Report.objects.filter(pk=signed.pk).update(patient_name_search="ZHANG SAN 张 三")  # the earlier matching form
    assert found(tenants.a.clinician, "张三") == []
    migration = importlib.import_module("reports.migrations.0003_lookup_name_words")
    migration.name_words(apps, None)
    assert found(tenants.a.clinician, "张三") == [str(signed.pk)]
