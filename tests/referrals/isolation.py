"""Isolation harness registrations of referrals and shares.

Each institution refers its archived study's patient to a partner hospital of
its own (not one of the walk's institutions) and shares the study with that
partner for a second opinion, so no walking user may see any of it. How a
grant to one of the walk's own institutions opens exactly the shared study,
and how revoking it closes it again, is proven in ``test_isolation_grants.py``.
"""

import secrets

from archive.models import Study
from pacs_cloud.models import Institution
from tests import isolation
from workflow.referrals import actions
from workflow.referrals.models import ReferralMessage


@isolation.factory
def referral_and_share(tenant):
    token = secrets.token_hex(4)
    partner = Institution.objects.create(
        slug=f"partner-{token}", name=f"Partner {token}", accession_prefix="PRT", patient_id_issuer=f"PRT{token}"
    )
    study = Study.objects.select_related("patient").get(pk=tenant.made["study.id"])
    coordinator = tenant.referral_coordinator
    referral = actions.do_create_referral(
        acting_user=coordinator,
        from_institution=tenant.institution,
        to_institution=partner,
        patient=study.patient,
        reason=f"ReasonSecret{token}",
        clinical_summary=f"SummarySecret{token}",
        studies=[study],
    )
    actions.do_record_consent(referral, acting_user=coordinator, method="written", note=f"ConsentSecret{token}")
    actions.do_send_referral(referral, acting_user=coordinator)
    message = actions.do_post_message(referral, acting_user=coordinator, body=f"MessageSecret{token}")
    share = actions.do_share_for_second_opinion(study, partner, acting_user=coordinator, reason=f"ShareSecret{token}")
    assert ReferralMessage.objects.filter(pk=message.pk).exists()
    return isolation.Made(
        values={"referral.id": referral.pk, "share.id": share.pk, "partner.id": partner.pk},
        secrets=[
            f"ReasonSecret{token}",
            f"SummarySecret{token}",
            f"ConsentSecret{token}",
            f"MessageSecret{token}",
            f"ShareSecret{token}",
        ],
    )


isolation.route(
    "/api/v1/referrals/",
    queries=[{"box": "inbox"}, {"box": "outbox", "state": "sent"}],
    bodies={
        "post": {
            "to_institution": isolation.Ref("institution.id"),
            "patient": isolation.Ref("patient.id"),
            "reason": "isolation",
        }
    },
)
isolation.route("/api/v1/referrals/{pk}/", pk="referral.id")
isolation.route("/api/v1/referrals/{pk}/timeline/", pk="referral.id")
isolation.route("/api/v1/referrals/{pk}/messages/", pk="referral.id", bodies={"post": {"body": "isolation"}})
for verb, body in [
    ("send", {"reason": "isolation"}),
    ("accept", {"reason": "isolation"}),
    ("decline", {"reason": "isolation"}),
    ("admit", {}),
    ("return", {"discharge_summary": "isolation", "follow_up_plan": "isolation"}),
    ("close", {}),
    ("cancel", {"reason": "isolation"}),
    ("consent", {"method": "written"}),
    ("attach", {"study": isolation.Ref("study.id")}),
    ("detach", {"study": isolation.Ref("study.id")}),
]:
    isolation.route(
        f"/api/v1/referrals/{{pk}}/{verb}/",
        pk="referral.id",
        bodies={"post": body},
        reachable=False,
        reason="POST only",
    )
isolation.route(
    "/api/v1/study-shares/",
    queries=[{"active": "true"}],
    bodies={"post": {"study": isolation.Ref("study.id"), "institution": isolation.Ref("partner.id"), "reason": "x"}},
)
isolation.route("/api/v1/study-shares/{pk}/", pk="share.id")
isolation.route(
    "/api/v1/study-shares/{pk}/revoke/",
    pk="share.id",
    bodies={"post": {"reason": "x"}},
    reachable=False,
    reason="POST only",
)
isolation.route(
    "/api/v1/referrals/{pk}/import/",
    pk="referral.id",
    bodies={"post": {"study": isolation.Ref("study.id")}},
    reachable=False,
    reason="POST only",
)

isolation.route(
    "/api/v1/study-shares/{pk}/import/",
    pk="share.id",
    bodies={"post": {"patient_id": "X-1"}},
    reachable=False,
    reason="POST only",
)

# Pages.
isolation.route("/referrals/", queries=[{"box": "outbox", "open": "0"}, {"box": "inbox"}])
# (Its search box echoes the query, so searching another institution's patient
# ID is tested in test_pages.py rather than here, where an echo reads as a leak.)
isolation.route(
    "/referrals/new/",
    bodies={
        "post": isolation.Form(
            {"studies": isolation.Ref("study.id"), "to_institution": isolation.Ref("partner.id"), "reason": "x"}
        )
    },
)
isolation.route("/referrals/{pk}/", pk="referral.id")
isolation.route(
    "/referrals/{pk}/act/",
    pk="referral.id",
    bodies={"post": isolation.Form({"action": "attach", "study": isolation.Ref("study.id")})},
    reachable=False,
    reason="POST only (a form target that redirects to the referral)",
)
isolation.route("/shares/", queries=[{"ended": "1"}])
isolation.route(
    "/shares/new/",
    bodies={
        "post": isolation.Form(
            {
                "study": isolation.Ref("study.id"),
                "institution": isolation.Ref("partner.id"),
                "reason": "x",
                "expires_at": "2999-01-01T00:00",
            }
        )
    },
)
isolation.route(
    "/shares/{pk}/act/",
    pk="share.id",
    bodies={"post": isolation.Form({"action": "revoke", "reason": "x"})},
    reachable=False,
    reason="POST only (a form target that redirects to the shares page)",
)
