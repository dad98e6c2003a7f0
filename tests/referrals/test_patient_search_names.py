"""The referral form's patient search finds a Chinese patient by the full name and by the name as pages show it."""

from __future__ import annotations

import pytest

from tests.conftest import web_client

from .conftest import archived_study


@pytest.fixture
def studies(tenants):
    return (
        archived_study(tenants.a.institution, patient_name="ZHANG^SAN=张^三", patient_id="ZS-1"),
        archived_study(tenants.a.institution, patient_name="LI^SI=李^四", patient_id="LS-1"),
    )


@pytest.mark.parametrize("typed", ["张三", "ZHANG, SAN", "张三 (ZHANG, SAN)", "zhang", "ZS-1"])
def test_the_referral_form_finds_the_patient(tenants, studies, typed):
    page = web_client(tenants.a.referral_coordinator).get("/referrals/new/", {"q": typed}).content.decode()
    assert "ZS-1" in page and "LS-1" not in page


@pytest.mark.parametrize("typed", ["张四", "ZHANG, SI"])
def test_the_referral_form_does_not_find_another_patient(tenants, studies, typed):
    page = web_client(tenants.a.referral_coordinator).get("/referrals/new/", {"q": typed}).content.decode()
    assert "ZS-1" not in page and "LS-1" not in page
