"""The seeded demo: idempotent, and every demo user signs in to their role's home page."""

import pytest
from django.core.management import call_command

from pacs_cloud import demo
from pacs_cloud.models import Institution, Membership, User
from tests.conftest import web_client

HOME_PANEL = {
    "institution_admin": "Your institution",
    "technologist": "Received today",
    "radiologist": "Waiting for a report",
    "referral_coordinator": "Shared with us by other institutions",
    "clinician": "Recently reported",
}


@pytest.fixture
def seeded(db, capsys, settings):
    # Hashing is tested elsewhere (Argon2 is slow on purpose); here it would
    # only multiply the time of seeding and signing in ten users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("seed_demo")
    return capsys.readouterr().out


def test_seeding_twice_changes_nothing(seeded):
    counts = (Institution.objects.count(), User.objects.count(), Membership.objects.count())
    call_command("seed_demo")
    assert (Institution.objects.count(), User.objects.count(), Membership.objects.count()) == counts
    # Ten demo users, and the service account of Riverside's demo edge gateway (a technologist member).
    assert counts == (4, 11, 10)


def test_it_prints_the_address_and_every_login(seeded):
    assert "http://127.0.0.1:8000/" in seeded
    for username, *_ in demo.USERS:
        assert username in seeded
    assert "platform" in seeded and demo.DEMO_PASSWORD in seeded


def test_every_demo_user_signs_in_to_their_home(seeded):
    for username, _, slug, role in demo.USERS:
        client = web_client()
        response = client.post("/login/", {"username": username, "password": demo.DEMO_PASSWORD})
        assert response.status_code == 302, username
        page = client.get("/").content.decode()
        assert Institution.objects.get(slug=slug).name in page, username
        assert HOME_PANEL[role] in page, username


def test_the_platform_administrator_signs_in(seeded):
    client = web_client()
    client.post("/login/", {"username": "platform", "password": demo.DEMO_PASSWORD})
    page = client.get("/").content.decode()
    assert "Expert Reading Centre" in page and "Failed sign-ins and lockouts" in page
    assert client.get("/admin/").status_code == 200
