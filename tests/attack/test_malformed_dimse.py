"""The malformed corpus over C-STORE to the cloud and to the edge: stored or refused with a reason, never 0xC211."""

from __future__ import annotations

import functools
import sqlite3

import pytest

from archive import dicomweb
from archive.dimse import start_server
from archive.models import DicomNode, Instance
from tests.attack.corpus import STORED, Case, cases
from tests.attack.malformed import c_store, problems
from tests.conftest import free_port
from tests.edge.conftest import cloud, edge_token, start_edge, storage_dir  # noqa: F401  (fixtures)

# The edge keeps every object it accepts and forwards it later: a sample of the
# corpus is enough there (the cloud gets the whole corpus over C-STORE and STOW-RS).
EDGE_SAMPLES = ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")


@functools.cache
def corpus() -> tuple[Case, ...]:
    return tuple(cases())


@pytest.fixture
def cloud_dicom(tenants, transactional_db, storage_dir):  # noqa: F811
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_CT", host="127.0.0.1")
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port)
    yield port
    server.shutdown()


def test_the_cloud_stores_or_refuses_every_c_store_with_its_reason(cloud_dicom, storage_dir):  # noqa: F811
    outcomes = c_store(cloud_dicom, "PACSCLOUD", "ALPHA_CT", list(corpus()))
    assert problems(outcomes) == []
    stored = {o.case.sop_instance_uid for o in outcomes if o.stored}
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == stored
    assert {o.case.sop_instance_uid for o in outcomes if o.case.expect == STORED} <= stored
    # Nothing in storage that the index does not know.
    keys = {str(p.relative_to(storage_dir)) for p in storage_dir.rglob("*.dcm")}
    assert keys == set(Instance.objects.values_list("storage_key", flat=True))


def outbox(edge) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(edge.data_dir / "edge" / "outbox.sqlite3") as db:
        rows = db.execute("SELECT sop_instance_uid, state, reason FROM instances")
        return {uid: (state, reason or "") for uid, state, reason in rows}


def test_the_edge_stores_or_refuses_every_c_store_and_forwards_or_quarantines_what_it_kept(start_edge, cloud):  # noqa: F811
    edge = start_edge()
    outcomes = c_store(edge.port, "PACSEDGE", "ALPHA_CT", list(cases(EDGE_SAMPLES)))
    assert problems(outcomes) == []
    kept = {o.case.sop_instance_uid for o in outcomes if o.stored}
    assert {o.case.sop_instance_uid for o in outcomes if o.case.expect == STORED} <= kept
    edge.wait_for(lambda s: s["forwarded"] + s["quarantined"] >= len(kept), timeout=60)
    rows = outbox(edge)
    assert set(rows) == kept
    for uid, (state, reason) in rows.items():
        assert state == "forwarded" or reason, uid  # quarantined ones say why
    forwarded = {uid for uid, (state, _) in rows.items() if state == "forwarded"}
    assert set(Instance.objects.filter(sop_instance_uid__in=kept).values_list("sop_instance_uid", flat=True)) == (
        forwarded
    )


def test_one_object_the_cloud_fails_on_holds_back_none_of_the_outbox(start_edge, cloud, monkeypatch):  # noqa: F811
    good = list(cases(("CT_small.dcm",), variants=5, mutations=("original",)))
    bad = good.pop()
    stow = dicomweb._stow

    def failing_on_one(request, study_uid):
        # A cloud that fails a whole request with 500 for one object in it.
        if bad.sop_instance_uid.encode() in request._request.body:
            raise RuntimeError("an internal error for this one object")
        return stow(request, study_uid)

    monkeypatch.setattr(dicomweb, "_stow", failing_on_one)
    edge = start_edge(EDGE_REFUSED_MAX_ATTEMPTS="2", EDGE_FORWARD_CONCURRENCY="1")
    outcomes = c_store(edge.port, "PACSEDGE", "ALPHA_CT", [bad, *good])
    assert all(o.stored for o in outcomes)
    status = edge.wait_for(lambda s: s["forwarded"] == len(good) and s["quarantined"] == 1, timeout=60)
    [item] = status["quarantine"]
    assert item["sop_instance_uid"] == bad.sop_instance_uid
    assert "500" in item["reason"] and "2 times" in item["reason"]
