"""Generated requests for every operation of the OpenAPI schema: none is answered 5xx.

Schemathesis builds requests from ``/api/schema/`` (valid ones and ones that
break the schema: wrong types, missing fields, bodies that are not objects)
with a fixed seed and a few examples per operation, and sends them through
the product's WSGI application as signed-in users of each kind. Each
request runs in a savepoint, so a refused write leaves the next one a clean
database. ``bench/`` is the place for a longer run.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from pacs_cloud.authentication import issue_token

EXAMPLES_PER_OPERATION = 2
SEED = 20261207
ROLES = ("institution_admin", "radiologist", "technologist", "referral_coordinator")


@pytest.fixture
def schema(db):
    from pacs_cloud.wsgi import application

    # As Django's test client does: the test's transaction is the connection's
    # own, which a request's start and end would otherwise close.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def send_examples(operation, mode: GenerationMode, tokens: list[str]) -> tuple[int, list[str]]:
    """Send the seeded examples of one operation; the number sent and the 5xx answers."""
    sent, failures = 0, []

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), token=st.sampled_from(tokens))
    def send(case, token):
        nonlocal sent
        sent += 1
        with transaction.atomic():
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            transaction.set_rollback(True)
        if response.status_code >= 500:
            failures.append(f"{mode.value} {response.status_code}: {case.as_curl_command()}")

    send()
    return sent, failures


def test_no_generated_request_is_answered_with_a_server_error(schema, tenants):
    tokens = [issue_token(getattr(tenants.a, role), name="schema run")[1] for role in ROLES]
    sent, failures = 0, []
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            count, found = send_examples(result.ok(), mode, tokens)
            sent, failures = sent + count, failures + found
    assert sent > 300
    assert failures == []
