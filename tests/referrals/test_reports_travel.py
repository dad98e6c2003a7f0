"""A referral's studies carry their reports: visible to the receiver while shared, 404 once it ends."""

from __future__ import annotations

from tests.conftest import api_client
from tests.reports.conftest import make_reading, write_and_sign
from workflow.referrals import actions


def test_a_signed_report_travels_with_its_study_and_stops_with_it(tenants):
    a, b, c = tenants.a, tenants.b, tenants.c
    reading = make_reading(a)
    report, _ = write_and_sign(reading, findings="Acute subdural haematoma, 8 mm, no midline shift.")
    url = f"/api/v1/reports/{report.pk}/"
    assert api_client(b.clinician).get(url).status_code == 404

    referral = actions.do_create_referral(
        acting_user=a.referral_coordinator,
        from_institution=a.institution,
        to_institution=b.institution,
        patient=reading.study.patient,
        reason="Neurosurgery",
        studies=[reading.study],
    )
    actions.do_record_consent(referral, acting_user=a.referral_coordinator, method="written")
    actions.do_send_referral(referral, acting_user=a.referral_coordinator)
    seen = api_client(b.clinician).get(url)
    assert seen.status_code == 200 and "subdural" in seen.content.decode()
    assert report.pk in {r["id"] for r in _reports(b.clinician)}
    assert api_client(c.clinician).get(url).status_code == 404

    actions.do_cancel_referral(referral, acting_user=a.referral_coordinator, reason="not needed")
    assert api_client(b.clinician).get(url).status_code == 404
    assert report.pk not in {r["id"] for r in _reports(b.clinician)}


def _reports(user):
    from uuid import UUID

    rows = api_client(user).get("/api/v1/reports/").json()
    rows = rows.get("results", rows) if isinstance(rows, dict) else rows
    return [{**r, "id": UUID(r["id"])} for r in rows]
