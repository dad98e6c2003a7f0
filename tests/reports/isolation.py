"""Isolation harness registrations of reports: templates, signed reports, critical results."""

import secrets

from archive.models import Study
from reports import actions
from reports.models import ReportTemplate
from tests import isolation
from tests.conftest import PASSWORD


@isolation.factory
def signed_report(tenant):
    """A template, and a report on the archive's study signed final by the radiologist with a critical result."""
    token = secrets.token_hex(4)
    study = Study.objects.select_related("patient", "institution").get(pk=tenant.made["study.id"])
    template = ReportTemplate.objects.create(
        institution=tenant.institution,
        name=f"TemplateSecret{token}",
        modality="",
        sections={"technique": f"TechniqueSecret{token}", "findings": "", "impression": ""},
    )
    user = tenant.radiologist
    report, _ = actions.do_create_report(study, acting_user=user, template=template)
    content = {**report.draft, "findings": f"FindingSecret{token}", "impression": f"ImpressionSecret{token}"}
    report = actions.do_autosave_draft(report, acting_user=user, content=content, base_revision=None)
    version = actions.do_sign_report(
        report,
        acting_user=user,
        password=PASSWORD,
        critical=True,
        critical_note=f"CriticalSecret{token}",
        recipient=tenant.clinician,
    )
    critical = version.critical_results.get()
    return isolation.Made(
        values={
            "report.id": report.pk,
            "report.code": version.verification_code,
            "report_template.id": template.pk,
            "critical_result.id": critical.pk,
        },
        secrets=[
            template.name,
            f"TechniqueSecret{token}",
            f"FindingSecret{token}",
            f"ImpressionSecret{token}",
            f"CriticalSecret{token}",
            version.verification_code,
        ],
    )


POST_ONLY = "a POST-only action; its GET answers 405 to everyone"
DRAFT = {"content": {"findings": "intrusion", "impression": "intrusion"}}

isolation.route(
    "/api/v1/reports/",
    queries=[
        {"patient_id": isolation.Ref("patient.patient_id")},
        {"accession": isolation.Ref("study.uid")},
        {"status": "final", "modality": "CT"},
    ],
    bodies={"post": {"study": isolation.Ref("study.id"), "template": isolation.Ref("report_template.id")}},
)
isolation.route("/api/v1/reports/{pk}/", pk="report.id", bodies={"patch": DRAFT})
isolation.route("/api/v1/reports/{pk}/draft/", pk="report.id", bodies={"put": DRAFT})
isolation.route("/api/v1/reports/{pk}/verify/", pk="report.id")
isolation.route("/api/v1/reports/{pk}/pdf/", pk="report.id")
isolation.route("/api/v1/reports/{pk}/fhir/", pk="report.id")
isolation.route(
    "/api/v1/reports/{pk}/sign/",
    pk="report.id",
    reachable=False,
    reason=POST_ONLY,
    bodies={"post": {"password": PASSWORD}},
)
isolation.route(
    "/api/v1/reports/{pk}/addendum/",
    pk="report.id",
    reachable=False,
    reason=POST_ONLY,
    bodies={"post": {"kind": "addendum"}},
)
isolation.route("/api/v1/reports/sign-window/")  # the caller's own signing window; names no object
isolation.route("/api/v1/reports/verify-code/", queries=[{"code": isolation.Ref("report.code")}])
isolation.route(
    "/api/v1/report-templates/",
    queries=[{"study": isolation.Ref("study.id")}],
    bodies={"post": {"institution": isolation.Ref("institution.id"), "name": "intrusion", "sections": {}}},
)
isolation.route(
    "/api/v1/report-templates/{pk}/",
    pk="report_template.id",
    bodies={"patch": {"name": "intrusion"}},
)
isolation.route("/api/v1/critical-results/", queries=[{"open": "1"}])
isolation.route("/api/v1/critical-results/{pk}/", pk="critical_result.id")
isolation.route(
    "/api/v1/critical-results/{pk}/acknowledge/", pk="critical_result.id", reachable=False, reason=POST_ONLY
)

# Pages.
isolation.param("report_id", "report.id")
isolation.param("critical_id", "critical_result.id")
isolation.route(
    "/reports/",
    queries=[{"patient_id": isolation.Ref("patient.patient_id")}, {"all": "1"}, {"code": isolation.Ref("report.code")}],
)
isolation.route("/reports/{report_id}/")
isolation.route(
    "/reports/{report_id}/edit/",
    reachable=False,
    reason="the factory's report is final: its editor redirects (302) to the report page",
)
isolation.route(
    "/reports/{report_id}/addendum/",
    reachable=False,
    reason=POST_ONLY,
    bodies={"post": isolation.Form({"kind": "addendum"})},
)
isolation.route(
    "/reports/studies/{study_id}/",
    reachable=False,
    reason="the study's signed report: it redirects (302) to the report page",
)
isolation.route("/reports/studies/{study_id}/write/", reachable=False, reason=POST_ONLY)
isolation.route("/reports/critical/{critical_id}/acknowledge/", reachable=False, reason=POST_ONLY)


# The exit: an export of each institution, run to the end (its download is reachable).
@isolation.factory
def exit_job(tenant):
    from reports.exit import actions as exit_actions

    job = exit_actions.do_request_export(tenant.institution, acting_user=tenant.institution_admin)
    exit_actions.do_run_export(job.pk, job.attempt)
    return isolation.Made(values={"exit_job.id": job.pk})


isolation.route(
    "/api/v1/exits/",
    bodies={"post": {"institution": isolation.Ref("institution.id"), "destination": "download"}},
)
isolation.route("/api/v1/exits/{pk}/", pk="exit_job.id", open_to={"platform"})
isolation.route("/api/v1/exits/{pk}/download/", pk="exit_job.id")
isolation.route("/api/v1/exits/{pk}/cancel/", pk="exit_job.id", reachable=False, reason=POST_ONLY)
isolation.route("/api/v1/exits/{pk}/restart/", pk="exit_job.id", reachable=False, reason=POST_ONLY)
isolation.route(
    "/api/v1/exits/{pk}/offboard/",
    pk="exit_job.id",
    open_to={"platform"},
    reachable=False,
    reason=POST_ONLY,
    bodies={"post": {"confirm": "not-the-slug"}},
)
isolation.route(
    "/api/v1/exits/{pk}/certificate/",
    pk="exit_job.id",
    open_to={"platform"},
    reachable=False,
    reason="only an offboarded institution's export has a certificate; before that everyone gets 404",
)

# The exit's page.
isolation.route("/reports/exit/")
isolation.route("/reports/exit/{job_id}/cancel/", job_id="exit_job.id", reachable=False, reason=POST_ONLY)
isolation.route("/reports/exit/{job_id}/restart/", job_id="exit_job.id", reachable=False, reason=POST_ONLY)
isolation.route(
    "/reports/exit/{job_id}/offboard/",
    job_id="exit_job.id",
    open_to={"platform"},
    reachable=False,
    reason=POST_ONLY,
    bodies={"post": isolation.Form({"confirm": "not-the-slug"})},
)
