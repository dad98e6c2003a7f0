"""Break-glass: emergency read access outside one's grants, time-limited, alerted, audited and reviewed."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from archive.breakglass.actions import do_allow_break_glass, do_end_expired_break_glass
from archive.breakglass.models import BreakGlassAccess
from archive.models import Patient, Study, StudyUserObjectPermission
from pacs_cloud import authcache, celery_app
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, web_client

pytestmark = pytest.mark.django_db
REASON = "胸痛入院，需要对比外院上周的CT"


@pytest.fixture(autouse=True)
def _eager_mail_and_fresh_memo():
    celery_app.conf.task_always_eager = True
    authcache.forget()
    yield
    celery_app.conf.task_always_eager = False
    authcache.forget()


@pytest.fixture
def alpha_study(tenants) -> Study:
    """A study of hospital a, which lets hospital b break glass (c: not)."""
    for user in (tenants.a.institution_admin, tenants.b.institution_admin):
        user.email = f"{user.username.replace('@', '.')}@hospital.cn"
        user.save(update_fields=["email"])
    do_allow_break_glass(tenants.a.institution, tenants.b.institution, acting_user=tenants.a.institution_admin)
    patient = Patient.objects.create(institution=tenants.a.institution, patient_id="A-1", name="张^三")
    return Study.objects.create(institution=tenants.a.institution, patient=patient, study_instance_uid="1.2.156.1.7")


def break_glass(user, uid, reason=REASON):
    return api_client(user).post("/api/v1/break-glass/", {"study_instance_uid": uid, "reason": reason}, format="json")


def test_a_clinician_of_an_allowed_hospital_gets_read_access_and_both_admins_are_told(
    tenants, alpha_study, django_capture_on_commit_callbacks
):
    clinician = tenants.b.clinician
    assert api_client(clinician).get(f"/api/v1/studies/{alpha_study.pk}/").status_code == 404

    with django_capture_on_commit_callbacks(execute=True):
        answer = break_glass(clinician, alpha_study.study_instance_uid)

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["study"] == str(alpha_study.pk) and body["active"] and body["reason"] == REASON
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(minutes=59) < expires - timezone.now() <= dt.timedelta(minutes=60)
    assert api_client(clinician).get(f"/api/v1/studies/{alpha_study.pk}/").status_code == 200
    # The grant is the archive's ordinary one.
    assert StudyUserObjectPermission.objects.filter(user=clinician, content_object_id=alpha_study.pk).exists()
    [message] = mail.outbox
    assert sorted(message.to) == ["institution_admin.alpha@hospital.cn", "institution_admin.bravo@hospital.cn"]
    assert REASON in message.body and "/break-glass/review/" in message.body
    opened = AuditEvent.objects.filter(action="archive.break_glass.opened", object_id=str(alpha_study.pk))
    assert {e.institution_id for e in opened} == {tenants.a.institution.pk, tenants.b.institution.pk}


@pytest.mark.parametrize("who", ["c.clinician", "b.technologist", "b.institution_admin", "a.clinician"])
def test_nobody_else_may_break_glass_and_a_refusal_looks_like_a_missing_study(tenants, alpha_study, who):
    key, role = who.split(".")
    user = getattr(tenants, key).users[role]
    assert break_glass(user, alpha_study.study_instance_uid).status_code == 404
    assert break_glass(user, "1.2.156.1.999").status_code == 404
    assert not BreakGlassAccess.objects.exists() and not mail.outbox


def test_the_reason_is_required(tenants, alpha_study):
    answer = break_glass(tenants.b.radiologist, alpha_study.study_instance_uid, reason="急")
    assert answer.status_code == 400 and "reason" in answer.json()
    assert not BreakGlassAccess.objects.exists()


def test_the_door_closes_at_expiry_and_the_sweep_takes_the_grant_back(tenants, alpha_study, settings):
    settings.AUTH_CACHE_SECONDS = 0
    radiologist = tenants.b.radiologist
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        assert break_glass(radiologist, alpha_study.study_instance_uid).status_code == 201
        clock.shift(dt.timedelta(minutes=59))
        assert api_client(radiologist).get(f"/api/v1/studies/{alpha_study.pk}/").status_code == 200
        clock.shift(dt.timedelta(minutes=2))
        # Expired, not yet swept: the grant row is still there, the door ignores it.
        assert StudyUserObjectPermission.objects.filter(user=radiologist).exists()
        assert api_client(radiologist).get(f"/api/v1/studies/{alpha_study.pk}/").status_code == 404
        assert api_client(radiologist).get("/api/v1/studies/").json()["results"] == []
        assert do_end_expired_break_glass() == 1
    assert not StudyUserObjectPermission.objects.filter(user=radiologist).exists()
    assert BreakGlassAccess.objects.get().ended_at is not None
    assert AuditEvent.objects.filter(action="archive.break_glass.ended").count() == 1
    assert do_end_expired_break_glass() == 0


def test_admins_review_each_access_with_its_reads_and_outsiders_see_none(tenants, alpha_study):
    clinician = tenants.b.clinician
    assert break_glass(clinician, alpha_study.study_instance_uid).status_code == 201
    assert api_client(clinician).get(f"/api/v1/studies/{alpha_study.pk}/").status_code == 200

    for admin in (tenants.a.institution_admin, tenants.b.institution_admin):
        [row] = api_client(admin).get("/api/v1/break-glass/").json()["results"]
        assert row["user"] == clinician.username and row["reason"] == REASON
        page = web_client(admin).get("/break-glass/review/")
        assert page.status_code == 200
        assert REASON in page.content.decode() and "archive.study.view" in page.content.decode()
    assert api_client(tenants.c.institution_admin).get("/api/v1/break-glass/").json()["results"] == []
    assert web_client(tenants.c.institution_admin).get("/break-glass/review/").content.decode().count(REASON) == 0
    assert web_client(tenants.b.clinician).get("/break-glass/review/").status_code == 404
    home = web_client(tenants.a.institution_admin).get("/").content.decode()
    assert "1 emergency access running now" in home and REASON in home


def test_the_page_asks_for_a_reason_and_opens_the_study(tenants, alpha_study):
    client = web_client(tenants.b.clinician)
    assert client.get(f"/break-glass/?study={alpha_study.study_instance_uid}").status_code == 200
    answer = client.post("/break-glass/", {"study_instance_uid": alpha_study.study_instance_uid, "reason": REASON})
    assert answer.status_code == 302 and answer["Location"] == f"/viewer/studies/{alpha_study.pk}/"


def test_the_api_is_in_the_schema(tenants):
    schema = api_client(tenants.a.clinician).get("/api/schema/?format=json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/break-glass/"])


@pytest.mark.django_db(transaction=True)
def test_both_hospitals_administrators_get_a_push_at_once(tenants, live_url):
    import json

    from websockets.sync.client import connect

    from archive.breakglass.actions import do_break_glass

    do_allow_break_glass(tenants.a.institution, tenants.b.institution, acting_user=tenants.a.institution_admin)
    patient = Patient.objects.create(institution=tenants.a.institution, patient_id="A-2", name="李^四")
    study = Study.objects.create(institution=tenants.a.institution, patient=patient, study_instance_uid="1.2.156.1.8")

    def socket(user):
        cookie = f"sessionid={web_client(user).cookies['sessionid'].value}"
        url = live_url.replace("http://", "ws://") + "/ws/notifications/"
        return connect(url, additional_headers={"Cookie": cookie, "Origin": live_url})

    with (
        socket(tenants.a.institution_admin) as owner,
        socket(tenants.b.institution_admin) as own,
        socket(tenants.c.institution_admin) as outsider,
    ):
        do_break_glass(tenants.b.clinician, study.study_instance_uid, reason=REASON)
        for admin in (owner, own):
            message = json.loads(admin.recv(timeout=10))
            assert message["topic"] == "break_glass.opened" and message["data"]["user"] == "clinician@bravo"
        with pytest.raises(TimeoutError):
            outsider.recv(timeout=0.5)
