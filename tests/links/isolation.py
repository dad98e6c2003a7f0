"""Isolation harness registrations of patient links, consents and link suggestions.

Each institution has a partner hospital of its own (not one of the walk's):
the partner recorded consents of two of its patients for the institution,
one of which the institution's coordinator linked with its archived
patient, the other suggested as a match for it; and the institution
recorded its own patient's consent for the partner. No walking user of
another institution may see any of it. How a consent opens a linked prior
to a reader, and revoking it closes it on every study route, is proven in
``test_patient_links.py``.
"""

import secrets

from archive.models import Patient
from pacs_cloud.models import Institution, Membership, Role
from tests import isolation
from tests.conftest import make_user
from workflow.links import actions
from workflow.links.models import LinkSuggestion


@isolation.factory
def patient_links(tenant):
    token = secrets.token_hex(4)
    partner = Institution.objects.create(
        slug=f"linked-{token}", name=f"Linked {token}", accession_prefix="LNK", patient_id_issuer=f"LNK{token}"
    )
    partner_coordinator = make_user(f"coord-{token}@linked")
    Membership.objects.create(user=partner_coordinator, institution=partner, role=Role.REFERRAL_COORDINATOR)
    ours = Patient.objects.get(pk=tenant.made["patient.id"])
    ours.national_id = f"NID{token}"
    ours.save(update_fields=["national_id"])
    # The partner's namesake: suggested, never linked by itself.
    namesake = Patient.objects.create(
        institution=partner,
        patient_id=f"LS-{token}",
        **{f: getattr(ours, f) for f in ("name", "name_search", "name_ideographic", "name_words", "birth_date", "sex")},
        national_id=ours.national_id,
    )
    actions.do_record_patient_consent(
        namesake, receiving_institution=tenant.institution, acting_user=partner_coordinator, note=f"Suggest{token}"
    )
    suggestion = LinkSuggestion.objects.get(patient=ours, candidate=namesake)
    # The partner's patient linked with ours by our coordinator.
    linked = Patient.objects.create(institution=partner, patient_id=f"LP-{token}", name=f"Linksecret{token}^X")
    actions.do_record_patient_consent(
        linked, receiving_institution=tenant.institution, acting_user=partner_coordinator, note=f"Partner{token}"
    )
    link = actions.do_link_patients(ours, linked, acting_user=tenant.referral_coordinator)
    # Our patient's consent for the partner.
    given = actions.do_record_patient_consent(
        ours, receiving_institution=partner, acting_user=tenant.referral_coordinator, note=f"ConsentNote{token}"
    )
    return isolation.Made(
        values={
            "links.partner.id": partner.pk,
            "links.partner_patient.id": linked.pk,
            "patient_link.id": link.pk,
            "link_suggestion.id": suggestion.pk,
            "patient_consent.id": given.pk,
        },
        secrets=[
            f"LS-{token}",
            f"LP-{token}",
            f"Linksecret{token}",
            f"Suggest{token}",
            f"Partner{token}",
            f"ConsentNote{token}",
        ],
    )


isolation.route(
    "/api/v1/patient-links/",
    bodies={
        "post": {"patient": isolation.Ref("patient.id"), "other_patient": isolation.Ref("links.partner_patient.id")}
    },
    also_allowed={400},
)
isolation.route("/api/v1/patient-links/{pk}/", pk="patient_link.id")
isolation.route(
    "/api/v1/patient-links/{pk}/unlink/",
    pk="patient_link.id",
    bodies={"post": {"reason": "intrusion"}},
    reachable=False,
    reason="POST only",
)
isolation.route("/api/v1/link-suggestions/", queries=[{"all": "true"}])
isolation.route("/api/v1/link-suggestions/{pk}/", pk="link_suggestion.id")
for verb in ("confirm", "reject"):
    isolation.route(
        f"/api/v1/link-suggestions/{{pk}}/{verb}/", pk="link_suggestion.id", reachable=False, reason="POST only"
    )
isolation.route(
    "/api/v1/consents/",
    bodies={
        "post": {"patient": isolation.Ref("patient.id"), "receiving_institution": isolation.Ref("links.partner.id")}
    },
    also_allowed={400},
)
isolation.route("/api/v1/consents/{pk}/", pk="patient_consent.id")
isolation.route(
    "/api/v1/consents/{pk}/revoke/",
    pk="patient_consent.id",
    bodies={"post": {"reason": "intrusion"}},
    reachable=False,
    reason="POST only",
)
isolation.route("/api/v1/patients/{pk}/outside-reads/", pk="patient.id")

# Pages.
isolation.route("/patient-links/")
isolation.route(
    "/patient-links/act/",
    bodies={"post": isolation.Form({"action": "unlink", "pk": isolation.Ref("patient_link.id")})},
)
# (Its search box echoes the patient ID searched: searching another institution's
# is tested in test_patient_links.py rather than here, where an echo reads as a leak.)
isolation.route("/patient-links/reads/")
isolation.route("/patients/{pk}/outside-reads/", pk="patient.id")
