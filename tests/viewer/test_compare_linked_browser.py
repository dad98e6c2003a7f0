"""Comparison in Chromium across hospitals: b's reader sees a's prior of the same patient while consent lasts.

a records 张三's consent for b; b's coordinator confirms the suggested match;
b's radiologist claims the new head CT and the
comparison view shows a's CT beside it, marked with its hospital, until a
revokes the consent.
"""

from __future__ import annotations

import pytest

from tests.conftest import browser_login
from tests.links.helpers import claimed_task
from workflow.links import actions as link_actions
from workflow.links.models import LinkSuggestion, PatientLink

from .test_compare_browser import exam

pytestmark = pytest.mark.browser


def test_the_receivers_comparison_shows_the_linked_prior_only_while_consent_lasts(
    tenants, live_url, tmp_path, browser_context
):
    a, b = tenants.a, tenants.b
    prior = exam(a.institution, tmp_path, day="20250314", slices=4, gap=5.0, start=-10.0)
    current = exam(b.institution, tmp_path, day="20261102", slices=6, gap=2.5, start=-8.0)
    consent = link_actions.do_record_patient_consent(
        prior.patient, receiving_institution=b.institution, acting_user=a.referral_coordinator
    )

    # b's coordinator confirms the suggested match (its page: tests/links/test_patient_links.py).
    suggestion = LinkSuggestion.objects.get(institution=b.institution)
    assert suggestion.score == 60 and not PatientLink.objects.exists()
    link = link_actions.do_confirm_suggestion(suggestion, acting_user=b.referral_coordinator)
    assert {link.patient_id, link.other_patient_id} == {prior.patient_id, current.patient_id}

    claimed_task(current, b.radiologist)
    reader = browser_login(browser_context(viewport={"width": 1280, "height": 800}), live_url, b.radiologist.username)
    reader.goto(f"{live_url}/viewer/studies/{current.pk}/compare/")
    reader.wait_for_selector("#compare[data-ready=true]")
    reader.wait_for_function("() => document.querySelectorAll('.pane[data-shown]').length === 2")
    assert reader.locator(".pane.prior").first.get_attribute("data-study") == str(prior.pk)
    linked = reader.locator("#prior-list button[data-linked=true]")
    assert linked.count() == 1 and f"from {a.institution.name}" in linked.inner_text()
    assert "2025-03-14" in reader.locator("#prior-list").inner_text()

    link_actions.do_revoke_patient_consent(consent, acting_user=a.referral_coordinator, reason="撤回同意")
    reader.goto(f"{live_url}/viewer/studies/{current.pk}/compare/")
    reader.wait_for_selector("#compare[data-ready=true]")
    assert reader.locator("#prior-list button").count() == 0
    assert reader.locator(".pane.prior[data-shown]").count() == 0
    assert reader.request.get(f"{live_url}/api/v1/viewer/studies/{prior.pk}/").status == 404
    assert reader.goto(f"{live_url}/viewer/studies/{prior.pk}/").status == 404
