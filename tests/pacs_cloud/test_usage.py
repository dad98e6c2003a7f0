"""Usage metering: real operations are counted, and the month's statement prices them exactly.

One live run does what a hospital does in a month — STOW-RS of three
instances in two studies, a rendered frame over HTTP, a study read through
another institution's pool and its report signed — and then reads the
statement as the hospital's administrator in the API, the CSV, the PDF and a
real browser, and the pool owner's credit as the platform administrator.
The faster tests pin the month boundary in UTC+8, access and the price list.
"""

from __future__ import annotations

import calendar
import datetime as dt
import subprocess
import time
from decimal import Decimal

import pytest
import requests
from django.db.models import Sum
from pydicom.uid import generate_uid

from archive.actions import do_complete_study
from archive.copies.tasks import snapshot_storage_usage
from archive.models import ObjectCopy, Study
from pacs_cloud.authentication import issue_token
from pacs_cloud.metering import counters, record_usage
from pacs_cloud.metering.models import Metric, Price, UsageCounter
from pacs_cloud.metering.statements import GB, statement
from pacs_cloud.models import AuditEvent
from reports import actions as report_actions
from tests.archive.conftest import encode, make_ct, storage_dir  # noqa: F401
from tests.conftest import PASSWORD, api_client, browser_login, web_client
from tests.workflow.conftest import centre, save_policy  # noqa: F401
from workflow.actions import do_claim_reading_task, do_start_reading_process
from workflow.models import ReadingTask

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
CHINESE_NAME = "阿尔法县人民医院"


def _bearer(user) -> dict[str, str]:
    _, key = issue_token(user, name="usage-test")
    return {"Authorization": f"Bearer {key}"}


def _stow(live_url: str, user, datasets) -> requests.Response:
    boundary = "usage-b0undary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + encode(ds) + b"\r\n" for ds in datasets
    )
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(
        f"{live_url}/dicomweb/studies", data=body, headers={**_bearer(user), "Content-Type": content_type}, timeout=30
    )


def _this_month() -> str:
    return dt.datetime.now(SHANGHAI).strftime("%Y-%m")


def _pool_reading(tenants, centre, study: Study) -> None:  # noqa: F811
    """The study is offered to the reading centre's pool only; a pool reader claims it and signs the report."""
    save_policy(
        tenants.a.institution,
        {"rules": [{"name": "Everything to the pool", "offer_to": [{"kind": "pool", "pool": str(centre.pool.pk)}]}]},
    )
    do_complete_study(study, actor_label="test")
    task = ReadingTask.objects.filter(study=study).first()
    if task is None:
        task = do_start_reading_process(Study.objects.get(pk=study.pk)).tasks.get()
    reader = centre.readers[0]
    do_claim_reading_task(task, acting_user=reader)
    report, _ = report_actions.do_create_report(study, acting_user=reader)
    content = {**report.draft, "findings": "未见明显异常。", "impression": "Normal."}
    report = report_actions.do_autosave_draft(
        report, acting_user=reader, content=content, base_revision=report.draft_revision
    )
    report_actions.do_sign_report(report, acting_user=reader, password=PASSWORD)


def _written_by_the_background(institution, wanted: dict[str, int], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = UsageCounter.objects.filter(institution_id=institution.pk, metric__in=wanted)
        found = {row["metric"]: row["n"] for row in rows.values("metric").annotate(n=Sum("quantity"))}
        if found == wanted:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.poppler
@pytest.mark.django_db(transaction=True)
def test_the_months_statement_matches_what_the_hospital_did(
    tenants,
    centre,  # noqa: F811
    live_url,
    storage_dir,  # noqa: F811
    browser_context,
    tmp_path,
    platform_admin,
):
    hospital = tenants.a.institution
    hospital.name = CHINESE_NAME
    hospital.save(update_fields=["name"])
    month = _this_month()

    # Three instances in two studies, stored with STOW-RS.
    study_uid, series_uid = generate_uid(), generate_uid()
    first = make_ct(
        study_uid=study_uid, series_uid=series_uid, patient_id="U1", patient_name="张^三", charset="ISO_IR 192"
    )
    second = make_ct(
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id="U1",
        patient_name="张^三",
        charset="ISO_IR 192",
        instance_number=2,
    )
    other = make_ct(patient_id="U2", accession="ACC2")
    assert _stow(live_url, tenants.a.technologist, [first, second, other]).status_code == 200
    # One rendered frame: an image rendered and the study's opening, a read.
    rendered = requests.get(
        f"{live_url}/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{first.SOPInstanceUID}/frames/1/rendered",
        headers={**_bearer(tenants.a.radiologist), "Accept": "image/jpeg"},
        timeout=30,
    )
    assert rendered.status_code == 200 and rendered.headers["Content-Type"] == "image/jpeg"
    # Nothing flushed them: the background writer has them in the table within a second or so.
    assert _written_by_the_background(hospital, {"instances_received": 3, "studies_received": 2, "images_rendered": 1})
    # Read by the reading centre's pool and signed: one report signed, one pool reading bought.
    _pool_reading(tenants, centre, Study.objects.get(institution=hospital, study_instance_uid=study_uid))
    # The day's storage snapshot.
    assert snapshot_storage_usage() >= 1
    copies = ObjectCopy.objects.filter(instance__institution=hospital).select_related("location")
    stored = sum(copy.size for copy in copies)
    site = copies[0].location.site
    assert {copy.location.tier for copy in copies} == {"online"}

    year, number = (int(part) for part in month.split("-"))
    gb_months = (Decimal(stored) / GB / calendar.monthrange(year, number)[1]).quantize(Decimal("0.001"))
    storage_amount = (gb_months * Decimal("0.12")).quantize(Decimal("0.01"))
    expected = {
        ("studies_received", ""): ("2.000", "1.0000", "2.00"),
        ("instances_received", ""): ("3.000", "0.0050", "0.02"),  # 0.015, rounded half up
        ("images_rendered", ""): ("1.000", "0.0002", "0.00"),
        ("reads", ""): ("1.000", "0.1000", "0.10"),
        ("reports_signed", ""): ("1.000", "0.5000", "0.50"),
        ("storage_online", site): (f"{gb_months:.3f}", "0.1200", f"{storage_amount:.2f}"),
        ("pool_readings_bought", "Delta Reading Centre"): ("1.000", "25.0000", "25.00"),
    }
    total = sum(Decimal(amount) for _, _, amount in expected.values())
    assert total == Decimal("27.62")

    # The API, as the hospital's administrator.
    answer = api_client(tenants.a.institution_admin).get(f"/api/v1/usage/statements/{hospital.pk}/{month}/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    lines = {
        (line["item"], line["detail"]): (line["quantity"], line["unit_price"], line["amount"]) for line in body["lines"]
    }
    assert lines == expected
    assert (body["total"], body["currency"], body["institution_name"]) == ("27.62", "CNY", CHINESE_NAME)
    assert body["starts_at"].endswith("+08:00") and body["starts_at"].startswith(f"{month}-01T00:00:00")

    # The pool's owner is credited for the reading it sold; the platform administrator sees both.
    platform = api_client(platform_admin)
    credit = platform.get(f"/api/v1/usage/statements/{centre.institution.pk}/{month}/").json()
    sold = [line for line in credit["lines"] if line["item"] == "pool_readings_sold"]
    assert [(line["quantity"], line["detail"], line["amount"]) for line in sold] == [("1.000", CHINESE_NAME, "-20.00")]
    overview = platform.get(f"/api/v1/usage/overview/{month}/").json()
    totals = {row["institution_name"]: row["total"] for row in overview["statements"]}
    assert totals[CHINESE_NAME] == "27.62" and totals["Delta Reading Centre"] == "-20.00"

    # CSV (UTF-8 with a BOM) and PDF (its text extracted) show the name and the total.
    admin = web_client(tenants.a.institution_admin)
    csv_bytes = admin.get(f"/institutions/{hospital.pk}/usage/{month}/statement.csv").content
    assert csv_bytes.startswith(b"\xef\xbb\xbf")
    csv_text = csv_bytes.decode("utf-8-sig")
    assert CHINESE_NAME in csv_text and "total,Total,,,,,27.62" in csv_text.replace("\r", "")
    assert "instances_received,Instances received,,3,instance,0.005,0.02" in csv_text.replace("\r", "")
    pdf = admin.get(f"/institutions/{hospital.pk}/usage/{month}/statement.pdf")
    assert pdf["Content-Type"] == "application/pdf"
    (tmp_path / "statement.pdf").write_bytes(pdf.content)
    text = subprocess.run(["pdftotext", str(tmp_path / "statement.pdf"), "-"], capture_output=True, text=True).stdout
    assert CHINESE_NAME in text and "27.62" in text and "Delta Reading Centre" in text

    # A real browser: the administrator's "Usage" link opens this month's statement.
    page = browser_login(browser_context(), live_url, tenants.a.institution_admin.username)
    page.click("nav >> text=Usage")
    page.wait_for_selector("#usage-statement")
    assert page.inner_text("#statement-month") == month
    assert page.inner_text("#usage-total") == "27.62"
    assert page.inner_text("tr[data-item=studies_received] .quantity") == "2"
    assert page.inner_text("tr[data-item=instances_received] .quantity") == "3"
    assert page.inner_text("tr[data-item=pool_readings_bought] .amount") == "25.00"
    assert CHINESE_NAME in page.inner_text("h1")

    reads = AuditEvent.objects.filter(action="usage.statement.view", institution_id=hospital.pk)
    assert {event.detail["format"] for event in reads} == {"api", "csv", "pdf", "html"}


def test_a_month_is_the_institutions_calendar_month_in_utc_plus_8(tenants, monkeypatch):
    hospital = tenants.a.institution  # Asia/Shanghai
    at = dt.datetime(2026, 1, 31, 15, 59, 59, tzinfo=dt.UTC)
    record_usage(hospital, Metric.REPORTS_SIGNED, at=at)  # 23:59:59 on 31 January in Shanghai
    record_usage(hospital, Metric.REPORTS_SIGNED, at=at + dt.timedelta(seconds=1))  # midnight: February
    # The buffered path too: counted at 00:00 on 1 March, Shanghai time.
    monkeypatch.setattr(counters.time, "time", lambda: dt.datetime(2026, 2, 28, 16, 0, tzinfo=dt.UTC).timestamp())
    counters.count_later(hospital.pk, Metric.IMAGES_RENDERED, 7)
    counters.flush()
    january, february, march = (statement(hospital, dt.date(2026, m, 1)) for m in (1, 2, 3))
    assert [s.quantity("reports_signed") for s in (january, february, march)] == [1, 1, 0]
    assert [s.quantity("images_rendered") for s in (january, february, march)] == [0, 0, 7]
    assert january.ends_at == february.starts_at == dt.datetime(2026, 1, 31, 16, 0, tzinfo=dt.UTC)
    assert (january.total, february.total) == (Decimal("0.50"), Decimal("0.50"))


def test_only_the_institutions_administrators_and_the_platform_read_its_statement(tenants, platform_admin):
    hospital = tenants.a.institution
    record_usage(hospital, Metric.READS, 3)
    paths = [
        f"/institutions/{hospital.pk}/usage/2026-01/",
        f"/institutions/{hospital.pk}/usage/2026-01/statement.csv",
        f"/institutions/{hospital.pk}/usage/2026-01/statement.pdf",
        f"/api/v1/usage/statements/{hospital.pk}/2026-01/",
    ]
    outsiders = [tenants.b.institution_admin, tenants.a.radiologist]
    for user in outsiders:
        client = web_client(user)
        assert [client.get(path).status_code for path in paths] == [404] * 4, user
        assert client.get("/usage/2026-01/").status_code == 404
        assert client.get("/api/v1/usage/overview/2026-01/").status_code == 404
    refused = AuditEvent.objects.filter(action="usage.statement.view_refused", object_id=str(hospital.pk))
    assert refused.count() == 4 * len(outsiders)
    for user in (tenants.a.institution_admin, platform_admin):
        client = web_client(user)
        assert [client.get(path).status_code for path in paths] == [200] * 4
        assert client.get(f"/institutions/{hospital.pk}/usage/2026-13/").status_code == 404
    assert web_client(platform_admin).get("/usage/2026-01/").status_code == 200
    # The platform's home table shows each institution's total so far this month (three reads: 0.30).
    home = web_client(platform_admin).get("/").content.decode()
    row = home[home.index(f"<td>{hospital.name}</td>") :].split("</tr>")[0]
    assert "<th>Usage this month (CNY)</th>" in home and "<td>0.30</td>" in row
    assert (
        web_client(tenants.a.institution_admin)
        .get("/usage/")
        .url.endswith(f"/institutions/{hospital.pk}/usage/{_this_month()}/")
    )


def test_the_platform_administrator_edits_the_price_list(tenants, platform_admin):
    hospital = tenants.a.institution
    record_usage(hospital, Metric.STUDIES_RECEIVED, 4, at=dt.datetime(2026, 5, 10, tzinfo=dt.UTC))
    assert statement(hospital, dt.date(2026, 5, 1)).amount("studies_received") == Decimal("4.00")
    # Nobody else may change it.
    refused = api_client(tenants.a.institution_admin).put(
        "/api/v1/usage/prices/", {"prices": [{"item": "studies_received", "unit_price": "0"}]}, format="json"
    )
    assert refused.status_code == 404
    assert web_client(tenants.a.institution_admin).post("/usage/prices/", {"studies_received": "0"}).status_code == 404
    # A bad price is refused with its reason and changes nothing.
    page = web_client(platform_admin).post("/usage/prices/", {"studies_received": "1.23456"})
    assert page.status_code == 200 and "at most 4 decimal places" in page.content.decode()
    answer = api_client(platform_admin).put(
        "/api/v1/usage/prices/", {"prices": [{"item": "studies_received", "unit_price": "2.5"}]}, format="json"
    )
    assert answer.status_code == 200
    listed = {p["item"]: p["unit_price"] for p in answer.json()["prices"]}
    assert (listed["studies_received"], listed["reads"]) == ("2.5000", "0.1000")
    assert Price.objects.get(item="studies_received").updated_by == platform_admin
    assert statement(hospital, dt.date(2026, 5, 1)).amount("studies_received") == Decimal("10.00")
    change = AuditEvent.objects.get(action="usage.prices.change")
    assert change.detail == {"changed": {"studies_received": ["1.00", "2.5000"]}}
