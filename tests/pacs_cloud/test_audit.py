import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from pacs_cloud import audit
from pacs_cloud.models import AuditEvent
from tests.conftest import requires_postgres


@pytest.mark.django_db
class TestAuditChain:
    def test_each_event_links_to_its_predecessor(self):
        first = audit.record("study.view", actor_label="tester", object_type="study", object_id="1")
        second = audit.record("study.view", actor_label="tester", object_type="study", object_id="2")
        assert first.prev_hash == audit.GENESIS_HASH
        assert second.prev_hash == first.hash
        assert audit.first_broken_link() is None

    def test_verify_audit_reports_a_tampered_row(self):
        for n in range(3):
            audit.record("study.view", actor_label="tester", object_id=str(n))
        middle = AuditEvent.objects.order_by("id")[1]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE pacs_cloud_auditevent DISABLE TRIGGER pacs_audit_append_only")
                cursor.execute("UPDATE pacs_cloud_auditevent SET object_id='999' WHERE id=%s", [middle.id])
                cursor.execute("ALTER TABLE pacs_cloud_auditevent ENABLE TRIGGER pacs_audit_append_only")
        else:
            AuditEvent.objects.filter(id=middle.id).update(object_id="999")
        with pytest.raises(CommandError, match=f"broken at event {middle.id}"):
            call_command("verify_audit")

    @requires_postgres
    def test_postgres_refuses_update_and_delete(self):
        event = audit.record("study.view", actor_label="tester")
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            AuditEvent.objects.filter(id=event.id).update(outcome="denied")
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            AuditEvent.objects.filter(id=event.id).delete()
