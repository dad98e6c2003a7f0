"""Group commit of index rows across associations (``archive.ingest.GroupCommit``).

Statements that arrive while another commit is in flight are committed
together in the next transaction; each caller returns only once its own
transaction has committed; a failing statement fails only its own caller.
(The real service's C-STORE path commits through it: ``test_durability.py``
and ``test_dimse_processes.py``.)
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import DataError, connection, connections

from archive.ingest import GroupCommit

# Each caller is a thread with its own connection, committing for itself.
pytestmark = pytest.mark.django_db


def txid(cursor: Any) -> int:
    cursor.execute("SELECT txid_current()")
    return cursor.fetchone()[0]


def committed(transaction_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid_status(%s)", [transaction_id])
        return cursor.fetchone()[0] == "committed"


class Caller(threading.Thread):
    """A thread (an association) committing one statement through ``group``."""

    def __init__(self, group: GroupCommit, statement) -> None:
        super().__init__(daemon=True)
        self.group, self.statement = group, statement
        self.result: Any = None
        self.error: BaseException | None = None
        self.committed_on_return: bool | None = None

    def run(self) -> None:
        try:
            self.result = self.group.run(self.statement)
            self.committed_on_return = committed(self.result)
        except BaseException as exc:
            self.error = exc
        finally:
            connections.close_all()


def committing_while(group: GroupCommit, statements: list) -> tuple[Caller, list[Caller]]:
    """A first caller commits alone and is held inside its transaction until ``statements``' callers queue."""
    inside, release = threading.Event(), threading.Event()

    def held(cursor: Any) -> int:
        found = txid(cursor)
        inside.set()
        assert release.wait(20)
        return found

    first = Caller(group, held)
    first.start()
    assert inside.wait(20)
    others = [Caller(group, statement) for statement in statements]
    for caller in others:
        caller.start()
    deadline = time.monotonic() + 20
    while len(group._queue) < len(statements):
        assert time.monotonic() < deadline, "the callers did not queue"
        time.sleep(0.01)
    release.set()
    for caller in [first, *others]:
        caller.join(20)
    return first, others


def test_statements_queued_during_a_commit_share_the_next_transaction_and_return_once_it_committed():
    group = GroupCommit()
    first, others = committing_while(group, [txid, txid, txid])
    assert first.error is None and all(caller.error is None for caller in others)
    assert len({caller.result for caller in others}) == 1  # one transaction for the three
    assert first.result not in {caller.result for caller in others}
    assert first.committed_on_return and all(caller.committed_on_return for caller in others)
    assert group.groups == 1
    assert not group._leading and not group._queue
    alone = Caller(group, txid)  # alone again: committed at once
    alone.start()
    alone.join(20)
    assert alone.error is None and alone.committed_on_return


def test_a_failing_statement_fails_only_its_own_caller():
    def divide_by_zero(cursor: Any) -> None:
        cursor.execute("SELECT 1 / 0")

    group = GroupCommit()
    first, (failing, fine) = committing_while(group, [divide_by_zero, txid])
    assert first.error is None and first.committed_on_return
    assert isinstance(failing.error, DataError)
    assert fine.error is None and fine.committed_on_return
    assert group.groups == 0  # the group was rolled back and its statements run one by one
