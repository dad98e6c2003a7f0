"""The malformed corpus over STOW-RS: each part stored or refused with its reason, everything stored readable."""

from __future__ import annotations

import functools

import pytest
import requests

from archive.models import Instance
from pacs_cloud.authentication import issue_token
from tests.attack.corpus import REFUSED, STORED, Case, cases
from tests.attack.malformed import multipart, problems, read_back, stow
from tests.conftest import web_client


@functools.cache
def corpus() -> tuple[Case, ...]:
    return tuple(cases())


@pytest.fixture
def storage_dir(tmp_path, settings):
    """The archive's file storage in a folder of this test."""
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.DATA_DIR = tmp_path
    return tmp_path / "objects"


@pytest.fixture
def headers(tenants, storage_dir) -> dict[str, str]:
    _, key = issue_token(tenants.a.technologist, name="attack")
    return {"Authorization": f"Bearer {key}"}


def test_every_part_is_stored_or_refused_with_its_reason_and_reads_back_cleanly(live_url, headers, storage_dir):
    http = requests.Session()
    outcomes = []
    for case in corpus():
        outcomes += stow(live_url, headers, [case], http)
    stored = [o for o in outcomes if o.stored]
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == {o.case.sop_instance_uid for o in stored}
    for outcome in stored:
        read_back(live_url, headers, outcome, http)
    assert problems(outcomes) == []
    # Nothing in storage that the index does not know.
    keys = {str(p.relative_to(storage_dir)) for p in storage_dir.rglob("*.dcm")}
    assert keys == set(Instance.objects.values_list("storage_key", flat=True))
    assert {o.case.expect for o in outcomes if o.stored} >= {STORED}
    assert any(not o.stored for o in outcomes if o.case.expect == REFUSED)


def test_a_stow_naming_another_institution_is_refused_not_stored_into_ones_own(live_url, tenants, headers):
    [case] = cases(("CT_small.dcm",), mutations=("original",))
    for institution in (tenants.b.institution.pk, "not-an-id"):
        body, content_type = multipart([case.data])
        # As a signed-in browser would: the session's current institution is a.
        client = web_client(tenants.a.technologist)
        response = client.post(f"/dicomweb/studies?institution={institution}", data=body, content_type=content_type)
        assert response.status_code == 403
        assert "cannot store images for institution" in response.json()["detail"]
        answer = requests.post(
            f"{live_url}/dicomweb/studies?institution={institution}",
            data=body,
            headers={**headers, "Content-Type": content_type},
            timeout=30,
        )
        assert answer.status_code == 403, answer.text
    assert not Instance.objects.exists()
    # Naming one's own institution stores there.
    body, content_type = multipart([case.data])
    own = requests.post(
        f"{live_url}/dicomweb/studies?institution={tenants.a.institution.pk}",
        data=body,
        headers={**headers, "Content-Type": content_type},
        timeout=30,
    )
    assert own.status_code == 200
    assert Instance.objects.get().institution == tenants.a.institution


def test_a_stow_without_any_part_is_a_bad_request(live_url, headers):
    content_type = 'multipart/related; type="application/dicom"; boundary=empty'
    answer = requests.post(
        f"{live_url}/dicomweb/studies",
        data=b"--empty--\r\n",
        headers={**headers, "Content-Type": content_type},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "no part" in answer.json()["detail"]
