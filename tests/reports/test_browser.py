"""In a real browser: a radiologist claims, writes from a template, adds a key image and signs;
the referring clinician is alerted live, finds the report and acknowledges the critical result."""

from __future__ import annotations

import pytest

from reports.models import CriticalResult, Report
from tests.conftest import PASSWORD, browser_login
from workflow.models import ReadingTask

from .conftest import make_reading

pytestmark = pytest.mark.browser


@pytest.mark.django_db(transaction=True)
def test_claim_write_sign_then_the_clinician_finds_and_acknowledges(tenants, live_url, browser_context):
    reading = make_reading(tenants.a, claim=False)
    clinician_page = browser_login(browser_context(), live_url, tenants.a.clinician.username)
    clinician_page.goto(f"{live_url}/")
    clinician_page.wait_for_selector("body[data-reports-live=on]")

    page = browser_login(browser_context(), live_url, tenants.a.radiologist.username)
    page.goto(f"{live_url}/workflow/")
    page.click(f'tr[data-task="{reading.task.pk}"] button.claim')
    page.wait_for_url(f"**/viewer/studies/{reading.study.pk}/")
    # The holder can go from the images straight to the report.
    assert page.locator("#write-report").is_visible()

    # From the home page's "Reports to write", with the template offered for the study.
    page.goto(f"{live_url}/")
    page.select_option("#reports-to-write select[name=template]", str(reading.template.pk))
    page.click("#reports-to-write button[type=submit]")
    page.wait_for_url("**/reports/*/edit/")
    assert page.input_value("#technique") == "Axial CT of the chest without contrast."
    page.click("#macros button:has-text('Normal chest')")
    assert page.input_value("#findings") == "Lungs are clear. No effusion."
    page.fill("#findings", "Lungs are clear. No effusion. Large left pneumothorax.")
    page.fill("#impression", "Large left pneumothorax.")
    page.click("#images button.mark-key-image")
    page.wait_for_selector("#chosen figure.chosen-key-image img")
    assert page.inner_text("#chosen figure.chosen-key-image figcaption").startswith("Series 1 · Image 1")
    page.wait_for_selector("#save-status:text-matches('^Saved')")
    report = Report.objects.get(study=reading.study)
    assert report.draft["key_images"][0]["instance"] == str(reading.instance.pk)

    page.click("#sign-open")
    page.fill("#sign-password", "not my password")
    page.click("#sign-submit")
    page.wait_for_selector("#sign-error:has-text('password')")
    page.fill("#sign-password", PASSWORD)
    page.check("#sign-critical")
    page.fill("#sign-critical-note", "Large left pneumothorax: call the ward.")
    page.click("#sign-submit")
    page.wait_for_url(f"**/reports/{report.pk}/")
    assert "Signature verified" in page.inner_text("#verify-badge")
    assert "Large left pneumothorax" in page.inner_text("#version-1")
    page.wait_for_selector("#version-1 .key-images img")
    assert ReadingTask.objects.get(pk=reading.task.pk).state == ReadingTask.State.FINAL

    # The clinician was alerted live, finds the report by accession number and acknowledges.
    clinician_page.wait_for_selector(".live-alert:has-text('call the ward')", timeout=45_000)
    clinician_page.goto(f"{live_url}/reports/")
    clinician_page.fill("input[name=accession]", reading.study.accession_number)
    clinician_page.click("#lookup button[type=submit]")
    clinician_page.click(f"#results a[href='/reports/{report.pk}/']")
    clinician_page.wait_for_url(f"**/reports/{report.pk}/")
    assert "Signature verified" in clinician_page.inner_text("#verify-badge")
    clinician_page.click("#acknowledge")
    clinician_page.wait_for_selector("text=Acknowledged by")
    row = CriticalResult.objects.get(report=report)
    assert row.acknowledged_by == tenants.a.clinician


@pytest.mark.django_db(transaction=True)
def test_the_editor_never_loses_typing(tenants, live_url, browser_context):
    from reports import actions

    reading = make_reading(tenants.a)
    report, _ = actions.do_create_report(reading.study, acting_user=tenants.a.radiologist, template=reading.template)
    context = browser_context()
    page = browser_login(context, live_url, tenants.a.radiologist.username)
    editor = f"{live_url}/reports/{report.pk}/edit/"
    page.goto(editor)
    page.fill("#findings", "Typed, then the tab was closed.")
    page.wait_for_selector("#save-status:text-matches('^Saved')")
    page.close()
    # A closed tab: the next one opens the server's draft.
    page = context.new_page()
    page.goto(editor)
    assert page.input_value("#findings") == "Typed, then the tab was closed."
    # A dropped link: typing stays in the browser, and is sent once the editor is back.
    context.set_offline(True)
    page.fill("#impression", "Typed while offline.")
    page.wait_for_selector("#save-status.offline")
    page.close()
    context.set_offline(False)
    page = context.new_page()
    page.goto(editor)
    assert page.input_value("#impression") == "Typed while offline."
    page.wait_for_selector("#save-status:text-matches('^Saved')")
    report.refresh_from_db()
    assert report.draft["impression"] == "Typed while offline."
    assert report.draft["findings"] == "Typed, then the tab was closed."
