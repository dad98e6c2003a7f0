import pytest

from tests.conftest import browser_login

pytestmark = pytest.mark.browser


def test_a_member_signs_in_and_sees_their_home(tenants, live_url, browser_context):
    page = browser_login(browser_context(), live_url, "clinician@alpha")
    assert page.url == f"{live_url}/"
    assert "Alpha County Hospital" in page.inner_text("h1")
