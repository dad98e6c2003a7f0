"""The DICOM service's own machinery: C-FIND responses written directly, database connections lent to associations."""

import threading
from io import BytesIO

import pytest
from django.db import connection, connections, transaction
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND

from archive.dimse import ConnectionPool, c_find_response_pdata
from pacs_cloud.models import Institution

WORKLIST = "1.2.840.10008.5.1.4.31"  # odd length: padded with NUL
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"


def c_find_response(sop_class: str, status: int, identifier: bytes | None) -> C_FIND:
    response = C_FIND()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = sop_class
    response.Status = status
    response.Identifier = BytesIO(identifier) if identifier is not None else None
    return response


def pdvs(pdatas) -> list:
    return [pdv for pdata in pdatas for pdv in pdata.presentation_data_value_list]


@pytest.mark.parametrize("sop_class", [WORKLIST, STUDY_ROOT])
@pytest.mark.parametrize(
    ("status", "identifier"),
    [(0xFF00, b"\x08\x00\x50\x00\x02\x00\x00\x00AB"), (0xFF01, b"x" * 300), (0x0000, None), (0xFE00, None)],
)
@pytest.mark.parametrize("max_pdu_length", [0, 16382, 340])
def test_a_c_find_response_carries_the_pdvs_pynetdicom_would_send(sop_class, status, identifier, max_pdu_length):
    response = c_find_response(sop_class, status, identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(response)
    expected = pdvs(message.encode_msg(1, max_pdu_length))
    found = c_find_response_pdata(response, 1, max_pdu_length)
    assert found is not None
    assert pdvs(found) == expected
    for pdata in found:  # each P-DATA-TF fits the peer's maximum length
        assert not max_pdu_length or sum(len(data) + 5 for _, data in pdata.presentation_data_value_list) <= (
            max_pdu_length
        )


def test_a_c_find_response_pynetdicom_must_write_is_left_to_it():
    failure = c_find_response(WORKLIST, 0xA900, None)
    failure.ErrorComment = "bad key"
    assert c_find_response_pdata(failure, 1, 0) is None
    too_big = c_find_response(WORKLIST, 0xFF00, b"x" * 1000)
    assert c_find_response_pdata(too_big, 1, 512) is None  # pynetdicom fragments it


def in_thread(work):
    found = []
    thread = threading.Thread(target=lambda: found.append(work()))
    thread.start()
    thread.join()
    return found[0]


@pytest.mark.django_db(transaction=True)
def test_threads_borrow_one_connection_in_turn():
    pool = ConnectionPool(size=2)

    def query():
        with pool.lent():
            Institution.objects.exists()
            wrapper = connections["default"]
        leftover = [c for c in connections.all(initialized_only=True) if c.alias == "default"]
        return wrapper, leftover

    first, leftover = in_thread(query)
    second, _ = in_thread(query)
    assert first is second
    assert leftover == []  # the thread keeps nothing once it gave the connection back
    pool.close()
    assert first.connection is None


@pytest.mark.django_db(transaction=True)
def test_a_connection_left_inside_a_transaction_is_not_lent_again():
    pool = ConnectionPool(size=2)

    def leave_a_transaction_open():
        with pool.lent():
            transaction.atomic().__enter__()
            Institution.objects.exists()
            return connections["default"]

    abandoned = in_thread(leave_a_transaction_open)
    assert abandoned.connection.closed  # closed (so rolled back), not pooled

    def borrow():
        with pool.lent():
            return connections["default"]

    assert in_thread(borrow) is not abandoned
    pool.close()


@pytest.mark.django_db(transaction=True)
def test_a_thread_with_its_own_connection_keeps_it():
    pool = ConnectionPool(size=2)
    Institution.objects.exists()
    own = connection.connection
    with pool.lent():
        assert connections["default"].connection is own
    pool.close()
