"""Worklist answers encoded without pydicom are byte for byte what pydicom writes."""

import datetime as dt

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from pacs_cloud.lib.dicom_match import encode_response, response_identifier
from worklist.mwl import order_record

STEP = {
    "ScheduledStationAETitle": "RIVERSIDE_CT",
    "ScheduledProcedureStepStartDate": dt.date(2024, 1, 15),
    "ScheduledProcedureStepStartTime": dt.time(10, 30, 5),
    "Modality": "CT",
    "ScheduledPerformingPhysicianName": None,
    "ScheduledProtocolCodeSequence": [{"CodeValue": "CT1", "CodingSchemeDesignator": "99RCH", "CodeMeaning": "CT"}],
    "ScheduledProcedureStepID": "SPS1",
}
RECORD = {
    "PatientName": "WANG^XIAOMING",
    "PatientID": "RCH0001",
    "PatientBirthDate": dt.date(1980, 5, 17),
    "PatientSex": "M",
    "AccessionNumber": "RCH2401010001",
    "StudyInstanceUID": "1.2.840.10008.99.123",  # odd length: padded with NUL
    "AdditionalPatientHistory": "cough\\fever",  # a backslash in a text value
    "MedicalAlerts": None,
    "ReferencedStudySequence": [],
    "RequestedProcedureCodeSequence": [{"CodeValue": "CT1", "CodingSchemeDesignator": "99RCH", "CodeMeaning": "CT"}],
    "ScheduledProcedureStepSequence": [STEP],
}
NAMES = {
    None: "WANG^XIAOMING",
    "ISO_IR 100": "MÜLLER^JOSÉ",
    "ISO_IR 192": "WANG^XIAOMING=王^小明=wang^xiao ming",
    "GB18030": "LIU^YANG=刘^洋",
    "GBK": "LIU^YANG=刘^洋",
}


def identifier(*, whole_step: bool) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",  # not in the record: returned empty
        "AccessionNumber",
        "StudyInstanceUID",
        "AdditionalPatientHistory",
        "MedicalAlerts",
    ):
        setattr(ds, keyword, None)
    ds.ReferencedStudySequence = Sequence([])
    ds.RequestedProcedureCodeSequence = Sequence([])
    step = Dataset()
    if not whole_step:
        step.ScheduledStationAETitle = "RIVERSIDE_CT"
        step.ScheduledProcedureStepStartDate = "20240101-20240131"
        step.ScheduledProcedureStepStartTime = None
        step.ScheduledProcedureStepID = None
        step.ScheduledProtocolCodeSequence = Sequence([])
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.add_new(0x00091010, "LO", None)  # a private key
    return ds


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("whole_step", [False, True], ids=["step keys", "whole step"])
@pytest.mark.parametrize("character_set", list(NAMES))
def test_an_answer_is_encoded_as_pydicom_encodes_it(character_set, whole_step, implicit_vr):
    record = {**RECORD, "PatientName": NAMES[character_set]}
    query = identifier(whole_step=whole_step)
    expected = encode(response_identifier(query, record, character_set=character_set), implicit_vr, True)
    assert encode_response(query, record, character_set=character_set, implicit_vr=implicit_vr) == expected


def test_an_answer_pydicom_must_write_is_left_to_pydicom():
    query = identifier(whole_step=False)
    # ISO 2022 code extensions switch character sets inside a value
    assert encode_response(query, RECORD, character_set="ISO 2022 IR 87", implicit_vr=False) is None
    # a name its character set cannot hold
    chinese = {**RECORD, "PatientName": "LIU^YANG=刘^洋"}
    assert encode_response(query, chinese, character_set="ISO_IR 100", implicit_vr=False) is None
    # a key with an ambiguous VR in Explicit VR
    ambiguous = identifier(whole_step=False)
    ambiguous.add_new(0x00280106, "US or SS", None)
    assert encode_response(ambiguous, RECORD, character_set=None, implicit_vr=False) is None


def test_a_real_order_is_encoded_as_pydicom_encodes_it(order_factory):
    order = order_factory(name="ZHANG^WEI=张^伟", clinical_info="cough for 3 weeks")
    record = order_record(order)
    query = identifier(whole_step=True)
    expected = encode(response_identifier(query, record, character_set="ISO_IR 192"), False, True)
    assert encode_response(query, record, character_set="ISO_IR 192", implicit_vr=False) == expected
