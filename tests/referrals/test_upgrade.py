"""A database migrated with the previous release upgrades with every referral, share and imported study intact.

The database is taken back to the migrations of the previous release
(``PREVIOUS_RELEASE``, the latest migration of each of the product's apps at
that release), filled through the models of that time (as the release
itself would have filled it), and migrated forward to whatever is latest
now. Every row the referral part owns, its grant and its timeline must come
out the same.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from archive.models import Study, StudyGroupObjectPermission
from pacs_cloud.fsm import history
from tests.conftest import requires_postgres
from workflow.referrals.models import ImportedStudy, Referral, ReferralMessage, ReferralStudy, StudyShare

pytestmark = [requires_postgres, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# The previous release (4eecf76): the latest migration of each of the product's apps.
PREVIOUS_RELEASE = [
    ("pacs_cloud", "0002_audit_append_only"),
    ("archive", "0005_edge_gateways"),
    ("worklist", "0002_order_changed_index"),
    ("workflow", "0002_referrals_and_sharing"),
    ("viewer", "0001_initial"),
    ("reports", "0002_versions_immutable"),
]

T0 = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
GONE = object()


def _migrate(targets: list[tuple[str, str]] | None = None) -> Any:
    """Migrate to ``targets`` (None: the latest of every app); the apps of the state reached."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    if targets is None:
        targets = executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def _row(model: Any, pk: Any) -> dict[str, Any]:
    return model.objects.filter(pk=pk).values().get()


def _fill(apps: Any) -> dict[str, list[Any]]:
    """Two hospitals, a referral in care with its study, messages, a timeline, a referral share and a
    second-opinion share with its grant, and a study imported under the receiver's patient."""
    Institution = apps.get_model("pacs_cloud", "Institution")
    User = apps.get_model("pacs_cloud", "User")
    Transition = apps.get_model("pacs_cloud", "Transition")
    ContentType = apps.get_model("contenttypes", "ContentType")
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    Patient = apps.get_model("archive", "Patient")
    HistoricStudy = apps.get_model("archive", "Study")
    Grant = apps.get_model("archive", "StudyGroupObjectPermission")
    HistoricReferral = apps.get_model("workflow", "Referral")

    county = Institution.objects.create(
        slug="county", name="County Hospital", accession_prefix="CTY", patient_id_issuer="CTY"
    )
    central = Institution.objects.create(
        slug="central-up", name="Central Hospital", accession_prefix="CEN", patient_id_issuer="CEN"
    )
    sender = User.objects.create(username="coord@county", password="!", display_name="County coordinator")
    receiver = User.objects.create(username="coord@central-up", password="!", display_name="Central coordinator")
    patient = Patient.objects.create(
        institution=county,
        patient_id="CTY-1",
        issuer="CTY",
        name="WU^JIAN=吴^建",
        birth_date=date(1949, 7, 30),
        sex="M",
    )
    local = Patient.objects.create(
        institution=central,
        patient_id="CEN-9",
        issuer="CEN",
        name="WU^JIAN=吴^建",
        birth_date=date(1949, 7, 30),
        sex="M",
    )
    uid = "1.2.826.0.1.3680043.8.498.1001"
    study = HistoricStudy.objects.create(institution=county, patient=patient, study_instance_uid=uid)
    second = HistoricStudy.objects.create(institution=county, patient=patient, study_instance_uid=uid + ".2")
    copy = HistoricStudy.objects.create(institution=central, patient=local, study_instance_uid=uid)
    referral = HistoricReferral.objects.create(
        patient=patient,
        from_institution=county,
        to_institution=central,
        direction="upward",
        urgency="urgent",
        reason="Suspected subdural haematoma",
        clinical_summary="Fall at home, GCS 14.",
        state="in_care",
        consent_method="written",
        consent_note="signed by the patient",
        consent_recorded_at=T0,
        consent_recorded_by=sender,
        share_until=T0 + timedelta(days=30),
        response_due_at=T0 + timedelta(hours=24),
        reminders_sent=1,
        created_by=sender,
        created_at=T0,
        sent_at=T0 + timedelta(minutes=5),
        responded_at=T0 + timedelta(hours=2),
        updated_at=T0 + timedelta(hours=3),
    )
    attached = apps.get_model("workflow", "ReferralStudy").objects.create(
        referral=referral, study=study, attached_by=sender, attached_at=T0
    )
    Message = apps.get_model("workflow", "ReferralMessage")
    messages = [
        Message.objects.create(
            referral=referral, kind="message", author=receiver, institution=central, body="Bed ready.", created_at=T0
        ),
        Message.objects.create(
            referral=referral, kind="reminder", institution=central, body="Reminder: a response is due.", created_at=T0
        ),
    ]
    Share = apps.get_model("workflow", "StudyShare")
    shares = [
        Share.objects.create(
            study=study,
            institution=central,
            kind="referral",
            referral=referral,
            reason=f"referral {referral.pk}",
            granted_by=sender,
            granted_at=T0 + timedelta(minutes=5),
            expires_at=T0 + timedelta(days=30),
        ),
        Share.objects.create(
            study=second,
            institution=central,
            kind="second_opinion",
            reason="neuroradiology opinion",
            granted_by=sender,
            granted_at=T0,
            expires_at=T0 + timedelta(days=14),
            revoked_at=T0 + timedelta(days=1),
            revoked_by=sender,
            revoke_reason="answered",
        ),
    ]
    view_study = Permission.objects.get(content_type__app_label="archive", codename="view_study")
    group = Group.objects.create(name=f"upgrade-{uuid.uuid4().hex[:8]}")
    grant = Grant.objects.create(group=group, permission=view_study, content_object=study)
    imported = apps.get_model("workflow", "ImportedStudy").objects.create(
        source_study=study,
        study=copy,
        institution=central,
        patient=local,
        share=shares[0],
        instances=40,
        imported_by=receiver,
        imported_at=T0 + timedelta(hours=4),
    )
    transition = Transition.objects.create(
        content_type=ContentType.objects.get(app_label="workflow", model="referral"),
        object_id=referral.pk,
        source="accepted",
        target="in_care",
        method="admit",
        actor=receiver,
        institution=central,
        reason="admitted to neurosurgery",
        time=T0 + timedelta(hours=3),
    )
    return {
        "Referral": [referral.pk],
        "ReferralStudy": [attached.pk],
        "ReferralMessage": [m.pk for m in messages],
        "StudyShare": [s.pk for s in shares],
        "ImportedStudy": [imported.pk],
        "StudyGroupObjectPermission": [grant.pk],
        "Transition": [transition.pk],
    }


def test_referrals_shares_and_imported_studies_survive_the_upgrade_from_the_previous_release():
    old = _migrate(PREVIOUS_RELEASE)
    made = _fill(old)
    labels = {
        "Referral": ("workflow", "Referral"),
        "ReferralStudy": ("workflow", "ReferralStudy"),
        "ReferralMessage": ("workflow", "ReferralMessage"),
        "StudyShare": ("workflow", "StudyShare"),
        "ImportedStudy": ("workflow", "ImportedStudy"),
        "StudyGroupObjectPermission": ("archive", "StudyGroupObjectPermission"),
        "Transition": ("pacs_cloud", "Transition"),
    }
    before = {name: [_row(old.get_model(*labels[name]), pk) for pk in pks] for name, pks in made.items()}

    new = _migrate()

    current = {
        "Referral": Referral,
        "ReferralStudy": ReferralStudy,
        "ReferralMessage": ReferralMessage,
        "StudyShare": StudyShare,
        "ImportedStudy": ImportedStudy,
        "StudyGroupObjectPermission": StudyGroupObjectPermission,
    }
    for name, rows in before.items():
        model = current.get(name) or new.get_model(*labels[name])
        assert model.objects.count() == len(rows), name
        for was in rows:
            now = _row(model, was["id"])
            # Columns a later release adds may be new; every column the previous one had keeps its value.
            changed = {k: (v, now.get(k, "(column gone)")) for k, v in was.items() if now.get(k, GONE) != v}
            assert not changed, f"{name} {was['id']}: (before, after) {changed}"
    # The rows still mean what they meant: the referral's part, its timeline, the grant of its study.
    referral = Referral.objects.get(pk=made["Referral"][0])
    assert referral.state == Referral.State.IN_CARE
    assert [a.study_id for a in referral.attachments.all()] == [before["ReferralStudy"][0]["study_id"]]
    assert {m.kind for m in referral.messages.all()} == {"message", "reminder"}
    assert [(t.method, t.target) for t in history(referral)] == [("admit", "in_care")]
    shares = {s.kind: s for s in StudyShare.objects.all()}
    assert shares["referral"].referral == referral and shares["referral"].is_active
    assert not shares["second_opinion"].is_active
    imported = ImportedStudy.objects.get()
    assert imported.share == shares["referral"] and imported.source_study.institution_id == referral.from_institution_id
    grant = StudyGroupObjectPermission.objects.get()
    assert grant.content_object == Study.objects.get(pk=referral.attachments.get().study_id)
