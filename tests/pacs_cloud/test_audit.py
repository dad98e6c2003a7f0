import threading

import psycopg2
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


@requires_postgres
@pytest.mark.django_db(transaction=True)
class TestAppendOutsideATransaction:
    """A read's event is appended alone, in two round trips, without forking the chain."""

    def test_it_takes_two_round_trips(self, django_assert_num_queries):
        audit.record("study.view", actor_label="tester")
        with django_assert_num_queries(2):
            event = audit.record("study.view", actor_label="tester", detail={"n": 1})
        stored = AuditEvent.objects.get(pk=event.pk)
        assert (stored.hash, stored.detail) == (event.hash, {"n": 1})
        assert audit.first_broken_link() is None

    def test_concurrent_appends_keep_one_chain_in_id_order(self):
        def append(worker: int) -> None:
            try:
                for n in range(15):
                    audit.record("study.view", actor_label=f"reader{worker}", object_id=str(n))
            finally:
                connection.close()

        threads = [threading.Thread(target=append, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert AuditEvent.objects.count() == 90
        assert audit.first_broken_link() is None

    def test_a_failed_append_leaves_no_transaction_open(self):
        with pytest.raises(DatabaseError):
            audit.record("study.view", actor_label="tester", object_type="x" * 200)
        assert connection.get_autocommit()
        assert connection.connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        audit.record("study.view", actor_label="tester")
        assert AuditEvent.objects.count() == 1
        assert audit.first_broken_link() is None
