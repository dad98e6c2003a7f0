"""The ingest hot path's shortcuts give exactly what the general path gives."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from archive.dimse import p_data_tf, store_response_command
from archive.ingest import _read_bare, json_metadata
from tests.archive.conftest import SAMPLES, dataset_bytes, dataset_part, make_ct, sample_path


@pytest.mark.parametrize(
    "sop_instance_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.24524188051894460414069260448354956171"]
)
@pytest.mark.parametrize("message_id", [1, 7, 65535])
def test_the_hand_encoded_store_answer_is_the_standard_encoding(sop_instance_uid, message_id):
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = 0x0000
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    assert store_response_command(primitive) == encode(message.command_set, True, True)


@pytest.mark.parametrize(
    "name", ["explicit_le", "implicit_le", "explicit_be", "jpeg_baseline", "multiframe", "overlays"]
)
def test_metadata_reusing_a_sessions_elements_is_the_full_conversion(name):
    filename, syntax = SAMPLES[name]
    data = dataset_bytes(sample_path(filename))
    known: dict = {}
    for _ in range(2):  # once filling the session's elements, once reusing them
        full, _, _ = _read_bare(data, syntax)
        reusing, _, _ = _read_bare(data, syntax)
        assert json_metadata(reusing, known) == json_metadata(full)
    assert known


def test_metadata_of_a_series_keeps_each_instances_own_values():
    study, series = generate_uid(), generate_uid()
    known: dict = {}
    for number in (1, 2, 3):
        ds = make_ct(study_uid=study, series_uid=series, instance_number=number, patient_name=f"DOE^JANE{number}")
        parsed, _, _ = _read_bare(dataset_part(ds), "1.2.840.10008.1.2.1")
        metadata = json_metadata(parsed, known)
        assert metadata["00200013"]["Value"] == [number]
        assert metadata["00080018"]["Value"] == [str(ds.SOPInstanceUID)]
        assert metadata["00100010"]["Value"] == [{"Alphabetic": f"DOE^JANE{number}"}]
        assert metadata["0020000D"]["Value"] == [study]


def test_the_same_bytes_in_another_character_set_are_decoded_in_that_one():
    known: dict = {}
    # "MÜLLER" in UTF-8 is, byte for byte, "MÃ\x9cLLER" in ISO 8859-1.
    utf8 = make_ct(patient_name="MÜLLER^HANS", charset="ISO_IR 192")
    latin = make_ct(patient_name="M\u00c3\u009cLLER^HANS", charset="ISO_IR 100")
    for ds, expected in ((utf8, "MÜLLER^HANS"), (latin, "M\u00c3\u009cLLER^HANS"), (utf8, "MÜLLER^HANS")):
        parsed, _, _ = _read_bare(dataset_part(ds), "1.2.840.10008.1.2.1")
        assert json_metadata(parsed, known)["00100010"]["Value"] == [{"Alphabetic": expected}]


def test_the_hand_encoded_answer_pdu_is_the_standard_encoding():
    command = b"\x03" + bytes(range(40))
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((5, command))
    assert p_data_tf(5, command) == P_DATA_TF(primitive).encode()
