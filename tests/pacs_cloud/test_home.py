"""Each role's home page, role-aware navigation and the institution switcher."""

import pytest

from archive.actions import grant_study_view
from archive.models import Study
from pacs_cloud.models import AuditEvent, Membership, Role, role_group_name
from tests.conftest import browser_login, web_client
from tests.samples import store_sample_study


@pytest.fixture
def studies(tenants, settings, tmp_path):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    made = {
        "received": store_sample_study(
            tenants.a.institution, patient_name="RECEIVED^ROSE", patient_id="A-100", accession="ACH100"
        ),
        "complete": store_sample_study(
            tenants.a.institution, patient_name="COMPLETE^CARL", patient_id="A-200", accession="ACH200"
        ),
        "reported": store_sample_study(
            tenants.a.institution, patient_name="REPORTED^RUTH", patient_id="A-300", accession="ACH300"
        ),
        "bravo": store_sample_study(
            tenants.b.institution, patient_name="BRAVO^BEN", patient_id="B-100", accession="BCH100"
        ),
    }
    Study.objects.filter(pk=made["complete"].study.pk).update(state=Study.State.COMPLETE)
    Study.objects.filter(pk=made["reported"].study.pk).update(state=Study.State.REPORTED)
    return made


def home_of(user) -> str:
    response = web_client(user).get("/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_technologist_sees_todays_arrivals(tenants, studies):
    page = home_of(tenants.a.technologist)
    assert "Received today" in page
    assert "RECEIVED, ROSE" in page and "ACH100" in page
    assert "BRAVO" not in page
    event = AuditEvent.objects.get(action="study.list")
    assert event.actor == "technologist@alpha" and event.detail["panel"] == "technologist"
    assert str(studies["received"].study.pk) in event.detail["study_ids"]


def test_a_radiologist_sees_what_waits_for_a_report(tenants, studies):
    page = home_of(tenants.a.radiologist)
    assert "Waiting for a report" in page
    assert "COMPLETE, CARL" in page
    assert "RECEIVED, ROSE" not in page and "REPORTED, RUTH" not in page


def test_a_clinician_sees_recent_reports(tenants, studies):
    page = home_of(tenants.a.clinician)
    assert "Recently reported" in page
    assert "REPORTED, RUTH" in page and "COMPLETE, CARL" not in page


def test_a_coordinator_sees_what_other_institutions_share(tenants, studies):
    assert "No other institution shares a study" in home_of(tenants.a.referral_coordinator)
    group = tenants.a.referral_coordinator.groups.get(
        name=role_group_name(tenants.a.institution, "referral_coordinator")
    )
    grant_study_view(studies["bravo"].study, groups=[group])
    page = home_of(tenants.a.referral_coordinator)
    assert "BRAVO, BEN" in page and "Bravo City Hospital" in page


def test_an_institution_admin_sees_members_and_no_patients(tenants, studies):
    page = home_of(tenants.a.institution_admin)
    assert "Your institution" in page and "Manage members" in page
    assert f"/institutions/{tenants.a.institution.pk}/members/" in page
    assert "ROSE" not in page and "A-100" not in page
    assert not AuditEvent.objects.filter(action="study.list").exists()


def test_a_platform_admin_sees_every_institution_and_no_patients(tenants, studies, platform_admin):
    page = home_of(platform_admin)
    assert "Platform" in page
    for tenant in tenants:
        assert tenant.institution.name in page
    assert "ROSE" not in page and "BEN" not in page
    assert "Administration" in page


def test_the_platform_table_counts_each_institutions_studies(tenants, studies, platform_admin):
    page = home_of(platform_admin)
    assert "<th>Studies</th>" in page
    rows = {tenant.institution.name: 0 for tenant in tenants}
    rows.update({tenants.a.institution.name: 3, tenants.b.institution.name: 1})
    for name, count in rows.items():
        row = page[page.index(f"<td>{name}</td>") :].split("</tr>")[0]
        assert f"<td>{count}</td>" in row, row


def test_navigation_follows_the_role(tenants):
    admin_page = home_of(tenants.a.institution_admin)
    assert ">Members</a>" in admin_page
    clinician_page = home_of(tenants.a.clinician)
    assert ">Members</a>" not in clinician_page
    assert 'aria-current="page">Home</a>' in clinician_page


def test_a_user_without_a_role_is_told_so(tenants):
    Membership.objects.filter(user=tenants.a.clinician).update(is_active=False)
    assert "holds no role" in home_of(tenants.a.clinician)


def test_switching_to_an_institution_you_do_not_belong_to_is_refused(tenants):
    client = web_client(tenants.a.radiologist)
    response = client.post("/institution/switch/", {"institution": str(tenants.b.institution.pk)})
    assert response.status_code == 404
    assert "Alpha County Hospital" in client.get("/").content.decode()


@pytest.mark.browser
def test_a_reader_for_two_hospitals_switches_between_them(tenants, studies, live_url, browser_context):
    reader = tenants.b.radiologist
    Membership.objects.create(user=reader, institution=tenants.a.institution, role=Role.RADIOLOGIST)
    Membership.objects.create(user=reader, institution=tenants.a.institution, role=Role.CLINICIAN)
    page = browser_login(browser_context(), live_url, reader.username)
    assert page.inner_text("h1") == "Bravo City Hospital"  # their own hospital first
    main = page.inner_text("main")
    assert "Waiting for a report" in main and "CARL" not in main and "Recently reported" not in main
    page.select_option("#institution-switch", label="Alpha County Hospital")  # submits on change
    page.wait_for_function("document.querySelector('h1').innerText === 'Alpha County Hospital'")
    main = page.inner_text("main")
    assert "COMPLETE, CARL" in main and "Recently reported" in main
    page.reload()
    assert page.inner_text("h1") == "Alpha County Hospital"  # the choice stays for the session


@pytest.mark.browser
@pytest.mark.parametrize(
    "role,heading",
    [
        ("technologist", "Received today"),
        ("radiologist", "Waiting for a report"),
        ("referral_coordinator", "Shared with us by other institutions"),
        ("clinician", "Recently reported"),
        ("institution_admin", "Your institution"),
    ],
)
def test_each_role_signs_in_to_its_home_page(tenants, live_url, browser_context, role, heading):
    page = browser_login(browser_context(), live_url, f"{role}@alpha")
    assert page.url == f"{live_url}/"
    assert any(heading in text for text in page.locator("section.panel h2").all_inner_texts())
