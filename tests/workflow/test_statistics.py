"""Statistics: figures from exams that went through the real actions, access per role, CSV and API.

One scenario at Alpha (Asia/Shanghai) on 2026-11-02, local times:

1. CT routine: registered 09:00, images 09:10, complete 09:15, claimed 09:45 by 王医生, signed 10:45.
2. MR routine: registered 09:00, images 09:20, complete 09:30, claimed 10:00 by 王医生, signed 10:20.
3. CT STAT: registered 10:00, images 10:05, complete 10:10, its 15-minute SLA breached and escalated
   to the Delta pool at 10:26, claimed 10:30 by the pool's 李医生, signed 10:50.
4. CT routine on 2026-11-03 at 07:30 (still the 2nd in UTC): images only.
Bravo has one CT on 2026-11-02; a referral from Alpha to Bravo is sent at 11:00 and declined at 12:00.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.management import call_command
from django.test import TestCase

from archive.actions import do_complete_study
from archive.edge.enrolment import do_enrol_edge, do_record_heartbeat
from archive.models import Study
from pacs_cloud.models import AuditEvent
from reports import actions as report_actions
from tests.conftest import PASSWORD, api_client, web_client
from tests.reports.conftest import archive_image, make_template
from tests.workflow.conftest import save_policy
from tests.worklist.conftest import make_order, make_patient, make_site
from workflow.actions import do_claim_reading_task, do_start_reading_process, do_sweep_reading_tasks
from workflow.models import StudyStat
from workflow.referrals import actions as referral_actions
from workflow.statistics.record import do_sample_edge_backlogs, rebuild

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = "2026-11-02"
RANGE = {"from": "2026-11-01", "to": "2026-11-03"}


def at(hour: int, minute: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI)


def sign(study, task, user, template) -> None:
    report, _ = report_actions.do_create_report(study, acting_user=user, template=template)
    content = {**report.draft, "findings": "未见异常。", "impression": "正常。"}
    report = report_actions.do_autosave_draft(
        report, acting_user=user, content=content, base_revision=report.draft_revision
    )
    report_actions.do_sign_report(report, acting_user=user, password=PASSWORD)


def exam(clock, site, *, name, modality, priority, registered, images, complete=None):
    """Register, archive the image (through ingest), complete and route; returns (study, task or None)."""
    clock.move_to(registered)
    patient = make_patient(site.institution, name, birth_date=None)
    order = make_order(site, patient, modality=modality, priority=priority, when=registered)
    clock.move_to(images)
    with TestCase.captureOnCommitCallbacks(execute=True):
        instance = archive_image(
            site.institution, study_uid=order.study_instance_uid, patient=patient, accession=order.accession_number
        )
    study = Study.objects.select_related("patient", "institution").get(pk=instance.series.study_id)
    if complete is None:
        return study, None
    clock.move_to(complete)
    do_complete_study(study, actor_label="test")
    study.refresh_from_db()
    return study, do_start_reading_process(study).tasks.get()


@pytest.fixture
def scenario(tenants, centre, tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.REPORTS_HL7_OUTBOUND = ""
    settings.WORKFLOW_SLA_FAST_PATH = False
    settings.STATISTICS_PLATFORM_TIME_ZONE = "Asia/Shanghai"
    settings.WORKFLOW_CLAIM_IDLE_MINUTES = 600  # the sweep at 10:26 must not take back idle claims
    a = tenants.a
    a.radiologist.display_name = "王医生"
    a.radiologist.save(update_fields=["display_name"])
    pool_reader = centre.readers[0]
    pool_reader.display_name = "李医生"
    pool_reader.save(update_fields=["display_name"])
    save_policy(
        a.institution,
        {
            "rules": [
                {
                    "name": "Own first, then the pool",
                    "offer_to": [{"kind": "own"}],
                    "sla_minutes": {"routine": 120, "urgent": 60, "stat": 15},
                    "escalation": [
                        {"offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}], "sla_minutes": {"stat": 30}}
                    ],
                }
            ]
        },
    )
    site_a, site_b = make_site(a.institution, "ALPHA"), make_site(tenants.b.institution, "BRAVO")
    template = make_template(a.institution)
    with time_machine.travel(at(8), tick=False) as clock:
        s1, t1 = exam(
            clock,
            site_a,
            name="张三",
            modality="CT",
            priority="routine",
            registered=at(9),
            images=at(9, 10),
            complete=at(9, 15),
        )
        s2, t2 = exam(
            clock,
            site_a,
            name="李四",
            modality="MR",
            priority="routine",
            registered=at(9),
            images=at(9, 20),
            complete=at(9, 30),
        )
        clock.move_to(at(9, 45))
        do_claim_reading_task(t1, acting_user=a.radiologist)
        clock.move_to(at(10))
        do_claim_reading_task(t2, acting_user=a.radiologist)
        s3, t3 = exam(
            clock,
            site_a,
            name="王五",
            modality="CT",
            priority="stat",
            registered=at(10),
            images=at(10, 5),
            complete=at(10, 10),
        )
        clock.move_to(at(10, 20))
        sign(s2, t2, a.radiologist, template)
        clock.move_to(at(10, 26))
        assert do_sweep_reading_tasks()["escalated"] == 1
        clock.move_to(at(10, 30))
        do_claim_reading_task(t3, acting_user=pool_reader)
        clock.move_to(at(10, 45))
        sign(s1, t1, a.radiologist, template)
        clock.move_to(at(10, 50))
        sign(s3, t3, pool_reader, template)
        exam(clock, site_b, name="赵六", modality="CT", priority="routine", registered=at(9), images=at(9, 30))
        exam(
            clock,
            site_a,
            name="孙七",
            modality="CT",
            priority="routine",
            registered=at(7, day=3),
            images=at(7, 30, day=3),
        )
        clock.move_to(at(11))
        referral = referral_actions.do_create_referral(
            acting_user=a.referral_coordinator,
            from_institution=a.institution,
            to_institution=tenants.b.institution,
            patient=s1.patient,
            reason="会诊",
            studies=[s1],
        )
        referral_actions.do_record_consent(referral, acting_user=a.referral_coordinator, method="written")
        referral_actions.do_send_referral(referral, acting_user=a.referral_coordinator)
        clock.move_to(at(12))
        referral_actions.do_decline_referral(referral, acting_user=tenants.b.referral_coordinator, reason="无床位")
        edge, _ = do_enrol_edge(a.institution, name="放射科前置机", acting_user=a.institution_admin)
        for hour, depth in ((13, 40), (14, 5)):
            clock.move_to(at(hour))
            do_record_heartbeat(edge, {"outbox_depth": depth, "oldest_unsent_seconds": depth * 60})
            do_sample_edge_backlogs()
    return tenants


def figures(user, chart: str, **params) -> list[dict]:
    response = api_client(user).get(f"/api/v1/statistics/{chart}/", {**RANGE, **params})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["time_zone"] == "Asia/Shanghai"
    return body["rows"]


def by_label(rows: list[dict], *fields: str) -> dict:
    return {r["label"]: tuple(r[f] for f in fields) if len(fields) > 1 else r[fields[0]] for r in rows}


def test_the_figures_follow_the_actions(scenario, centre, platform_admin):
    admin = scenario.a.institution_admin
    per_day = {r["key"]: r["studies"] for r in figures(admin, "volume-by-day")}
    assert per_day == {"2026-11-01": 0, DAY: 3, "2026-11-03": 1}
    assert by_label(figures(admin, "volume-by-modality"), "studies") == {"CT": 3, "MR": 1}
    assert by_label(figures(admin, "volume-by-body-part"), "studies") == {"CHEST": 3, "HEAD": 1}
    assert by_label(figures(admin, "volume-by-station"), "studies") == {"ALPHA CT 1": 3, "ALPHA MR 1": 1}
    assert by_label(figures(admin, "volume-by-modality", modality="MR"), "studies") == {"MR": 1}
    assert figures(admin, "volume-by-day", **{"from": DAY, "to": DAY})[0]["studies"] == 3

    priority = {r["key"]: r for r in figures(admin, "turnaround-by-priority")}
    routine, stat = priority["routine"], priority["stat"]
    assert (routine["studies"], routine["signed"]) == (3, 2)
    assert (routine["total_median"], routine["total_p90"]) == (77.5, 91.5)  # 95 and 60 minutes
    assert (routine["to_images_median"], routine["to_claim_median"], routine["to_sign_median"]) == (20.0, 30.0, 40.0)
    assert (stat["total_median"], stat["to_complete_median"], stat["to_claim_median"]) == (45.0, 5.0, 20.0)
    readers = by_label(figures(admin, "turnaround-by-reader"), "studies", "total_median")
    assert readers == {"王医生": (2, 77.5), "李医生": (1, 45.0)}
    assert by_label(figures(admin, "turnaround-by-pool"), "studies") == {"Own radiologists": 2, "Delta night pool": 1}

    sla = {r["key"]: r for r in figures(admin, "sla-by-priority")}
    assert (sla["routine"]["met"], sla["routine"]["breached"], sla["routine"]["compliance"]) == (2, 0, 100.0)
    assert (sla["stat"]["breached"], sla["stat"]["escalations"], sla["stat"]["compliance"]) == (1, 1, 0.0)
    assert by_label(figures(admin, "workload"), "studies", "weighted") == {"王医生": (2, 2.5), "李医生": (1, 1.0)}

    sent = {r["key"]: r for r in figures(admin, "referrals")}
    assert (sent["sent"]["referrals"], sent["sent"]["declined"], sent["sent"]["response_median"]) == (1, 1, 60.0)
    received = {r["key"]: r for r in figures(scenario.b.institution_admin, "referrals")}["received"]
    assert (received["referrals"], received["declined"]) == (1, 1)

    backlog = figures(admin, "edge-backlog")
    assert [(r["key"], r["label"], r["outbox_depth"]) for r in backlog] == [
        (f"{DAY} 13:00", "放射科前置机", 40),
        (f"{DAY} 14:00", "放射科前置机", 5),
    ]

    # The pool's owner sees what the pool read, for every hospital.
    pool_admin = centre.institution.memberships.model.objects.create(
        user=scenario.c.institution_admin, institution=centre.institution, role="institution_admin"
    ).user
    assert by_label(figures(pool_admin, "workload", pool=str(centre.pool.pk)), "studies") == {"李医生": 1}

    # The platform sees every institution, but no reader by name.
    everyone = by_label(figures(platform_admin, "volume-by-institution"), "studies")
    assert everyone == {scenario.a.institution.name: 4, scenario.b.institution.name: 1}
    assert api_client(platform_admin).get("/api/v1/statistics/workload/", RANGE).status_code == 404
    everything = web_client(platform_admin).get("/statistics/", RANGE).content.decode()
    assert f"<td>{scenario.a.institution.name}</td><td>4</td>" in everything
    assert "王医生" not in everything and "Delta night pool" not in everything
    pool_page = web_client(pool_admin).get("/statistics/", {**RANGE, "pool": str(centre.pool.pk)}).content.decode()
    assert "<td>李医生</td><td>1</td><td>1.0</td>" in pool_page and "王医生" not in pool_page

    # The page computes the same figures in one grouped scan for all its charts.
    page = web_client(admin).get("/statistics/", RANGE).content.decode()
    for chart in ("turnaround-by-priority", "turnaround-by-reader", "workload", "sla-by-priority", "volume-by-station"):
        assert f'id="chart-{chart}"' in page
    assert "<td>77.5</td><td>91.5</td>" in page  # routine, images → signed
    assert "<td>王医生</td><td>2</td><td>2.5</td>" in page

    # A rebuild from the source tables gives the same rows.
    kept = {
        r.pk: (
            r.day,
            r.priority,
            r.station,
            r.claimed_at,
            r.signed_at,
            r.reader_id,
            r.pool_id,
            r.breached,
            r.escalations,
        )
        for r in StudyStat.objects.all()
    }
    StudyStat.objects.all().delete()
    call_command("rebuild_statistics", stdout=io.StringIO())
    rebuilt = {
        r.pk: (
            r.day,
            r.priority,
            r.station,
            r.claimed_at,
            r.signed_at,
            r.reader_id,
            r.pool_id,
            r.breached,
            r.escalations,
        )
        for r in StudyStat.objects.all()
    }
    assert rebuilt == kept
    assert rebuild() == 5

    # Each chart downloads as CSV that Excel reads (UTF-8 with a byte-order mark).
    client = web_client(scenario.a.institution_admin)
    response = client.get("/statistics/workload.csv", RANGE)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    raw = response.content
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == ["Radiologist", "Studies signed", "Weighted studies"]
    assert ["王医生", "2", "2.5"] in rows
    assert client.get("/statistics/workload.csv", {"from": "2026-11-05", "to": "2026-11-01"}).status_code == 400
    assert AuditEvent.objects.filter(action="workflow.statistics.view", object_id="workload.csv").exists()


def test_only_administrators_see_their_own_scope(tenants, centre, platform_admin):
    a, b = tenants.a, tenants.b
    foreign = {"institution": str(b.institution.pk), **RANGE}
    for user in (a.radiologist, a.technologist, a.clinician, a.referral_coordinator):
        assert web_client(user).get("/statistics/").status_code == 404
        assert api_client(user).get("/api/v1/statistics/volume-by-day/").status_code == 404
    assert web_client(a.institution_admin).get("/statistics/", foreign).status_code == 404
    assert api_client(a.institution_admin).get("/api/v1/statistics/volume-by-day/", foreign).status_code == 404
    assert web_client(a.institution_admin).get("/statistics/", {"pool": str(centre.pool.pk)}).status_code == 404
    assert web_client(None).get("/statistics/").status_code == 302  # to the sign-in page

    page = web_client(a.institution_admin).get("/statistics/", RANGE)
    assert page.status_code == 200
    text = page.content.decode()
    assert "<svg" in text and a.institution.name in text and b.institution.name not in text
    events = AuditEvent.objects.filter(action="workflow.statistics.view", actor_id=a.institution_admin.pk)
    assert events.filter(institution_id=a.institution.pk, object_id="page").exists()
    assert web_client(platform_admin).get("/statistics/", foreign).status_code == 200


@pytest.mark.parametrize(
    "weights", [[1, 2], {"CT": "heavy"}, {"CT": -1}], ids=["not-an-object", "not-a-number", "negative"]
)
def test_wrong_modality_weights_are_a_configuration_error(settings, weights):
    from workflow.statistics.checks import check_statistics

    settings.STATISTICS_MODALITY_WEIGHTS = weights
    assert [e.id for e in check_statistics(None)] == ["workflow.E101"]
    settings.STATISTICS_MODALITY_WEIGHTS = {"CT": 1.0, "*": 1}
    assert check_statistics(None) == []
