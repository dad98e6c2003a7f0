"""C-FIND matching as PS3.4 C.2.2.2 defines it, on records and on real orders."""

import datetime as dt

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from pacs_cloud.lib.dicom_match import (
    InvalidKey,
    check_keys,
    match_person_name,
    record_matches,
    response_identifier,
)
from worklist.models import Order
from worklist.mwl import answer_character_set, find_scheduled_steps

from .conftest import local, today


def query(**keys) -> Dataset:
    ds = Dataset()
    step = keys.pop("step", None)
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    if step is not None:
        item = Dataset()
        for keyword, value in step.items():
            setattr(item, keyword, value)
        ds.ScheduledProcedureStepSequence = Sequence([item] if step or step == {} else [])
    return ds


RECORD = {
    "PatientName": "WANG^XIAOMING=王^小明=wang^xiao ming",
    "PatientID": "RCH0001",
    "PatientBirthDate": dt.date(1980, 5, 17),
    "AccessionNumber": "RCH2401010001",
    "StudyInstanceUID": "1.2.3.4",
    "MedicalAlerts": None,
    "ScheduledProcedureStepSequence": [
        {
            "Modality": "CT",
            "ScheduledStationAETitle": "RIVERSIDE_CT",
            "ScheduledProcedureStepStartDate": dt.date(2024, 1, 15),
            "ScheduledProcedureStepStartTime": dt.time(10, 30),
            "ScheduledProcedureStepID": "SPS1",
        }
    ],
}


@pytest.mark.parametrize(
    ("key", "matches"),
    [
        ("WANG^XIAOMING", True),
        ("wang^xiaoming", True),  # PN is matched without regard to case
        ("WANG^XIAOMING^^", True),  # trailing empty components are insignificant
        ("WANG*", True),
        ("W?NG^*", True),
        ("*MING", True),
        ("WANG", False),  # single value matching is not a prefix search
        ("LI*", False),
        ("王^小明", True),  # one group matches any group of the name
        ("王*", True),
        ("*小明", True),
        ("=王^小明", True),  # by component group
        ("WANG^XIAOMING=王^小明", True),
        ("LI^SI=王^小明", False),
        ("=李*", False),
        ("WANG^XIAOMING=王^小明=WANG^XIAO MING", True),
    ],
)
def test_person_names_match_as_ps3_4_allows(key, matches):
    assert match_person_name(key, RECORD["PatientName"]) is matches


def test_names_match_without_accents_or_full_width_forms():
    assert match_person_name("MULLER^HANS", "Müller^Hans")
    assert match_person_name("ＷＡＮＧ*", "WANG^WEI")


@pytest.mark.parametrize(
    ("keys", "matches"),
    [
        ({"PatientID": "RCH0001"}, True),
        ({"PatientID": "rch0001"}, False),  # not a PN: exact, case-sensitive
        ({"PatientID": "RCH*"}, True),
        ({"PatientID": "RCH000?"}, True),
        ({"PatientID": "RCH00?"}, False),
        ({"PatientID": ""}, True),  # universal
        ({"PatientID": "*"}, True),
        ({"AccessionNumber": " RCH2401010001 "}, True),  # surrounding spaces are insignificant
        ({"MedicalAlerts": "LATEX"}, False),  # an unknown value fails every real key
        ({"MedicalAlerts": "*"}, True),
        ({"PatientComments": "anything"}, True),  # an unsupported key is only returned
        ({"StudyInstanceUID": "9.9\\1.2.3.4"}, True),  # list of UIDs
        ({"StudyInstanceUID": "1.2.3"}, False),
        ({"PatientBirthDate": "19800517"}, True),
        ({"PatientBirthDate": "19800101-19801231"}, True),
        ({"PatientBirthDate": "-19791231"}, False),
        ({"PatientBirthDate": "19800518-"}, False),
    ],
)
def test_single_value_wild_card_universal_uid_list_and_range_matching(keys, matches):
    assert record_matches(query(**keys), RECORD) is matches


@pytest.mark.parametrize(
    ("step", "matches"),
    [
        ({}, True),  # an empty item is universal
        ({"Modality": "CT"}, True),
        ({"Modality": "MR"}, False),
        ({"Modality": "ct"}, False),
        ({"ScheduledStationAETitle": "RIVERSIDE_CT", "Modality": "CT"}, True),
        ({"ScheduledStationAETitle": "HILLSIDE_MR", "Modality": "CT"}, False),
        ({"ScheduledProcedureStepStartDate": "20240115"}, True),
        ({"ScheduledProcedureStepStartDate": "20240101-20240131"}, True),
        ({"ScheduledProcedureStepStartDate": "20240116-"}, False),
        ({"ScheduledProcedureStepStartDate": "-20240115"}, True),
        ({"ScheduledProcedureStepStartTime": "1000-1100"}, True),
        ({"ScheduledProcedureStepStartTime": "10"}, True),  # 10 covers 10:00:00 to 10:59:59
        ({"ScheduledProcedureStepStartTime": "1031-"}, False),
        ({"ScheduledProcedureStepStartTime": "-1030"}, True),
    ],
)
def test_the_scheduled_step_sequence_matches_item_by_item(step, matches):
    assert record_matches(query(step=step), RECORD) is matches


@pytest.mark.parametrize("bad", ["2024-01-15", "20241315", "yesterday", "20240101-2024"])
def test_a_malformed_date_key_is_refused(bad):
    with pytest.raises(InvalidKey):
        check_keys(query(step={"ScheduledProcedureStepStartDate": bad}))


def test_the_answer_holds_exactly_the_requested_attributes():
    identifier = query(PatientName="WANG*", PatientSex="", step={"Modality": "CT", "ScheduledProcedureStepID": ""})
    answer = response_identifier(identifier, RECORD, character_set="ISO_IR 192")
    assert sorted(e.keyword for e in answer) == [
        "PatientName",
        "PatientSex",
        "ScheduledProcedureStepSequence",
        "SpecificCharacterSet",
    ]
    assert answer.PatientName == RECORD["PatientName"]
    assert answer.PatientSex in (None, "")
    (item,) = answer.ScheduledProcedureStepSequence
    assert sorted(e.keyword for e in item) == ["Modality", "ScheduledProcedureStepID"]
    assert item.ScheduledProcedureStepID == "SPS1"


def test_a_zero_length_sequence_key_asks_for_the_whole_sequence():
    identifier = query(step=None)
    identifier.ScheduledProcedureStepSequence = Sequence([])
    answer = response_identifier(identifier, RECORD)
    (item,) = answer.ScheduledProcedureStepSequence
    assert item.ScheduledStationAETitle == "RIVERSIDE_CT"
    assert item.ScheduledProcedureStepStartDate == "20240115"
    assert item.ScheduledProcedureStepStartTime == "103000"


def test_answers_use_the_stations_set_then_the_querys_then_utf8():
    chinese = {"PatientName": "王^小明"}
    assert answer_character_set(chinese, requested="", preferred="GB18030") == "GB18030"
    assert answer_character_set(chinese, requested="GB18030") == "GB18030"
    assert answer_character_set(chinese, requested="ISO_IR 100") == "ISO_IR 192"  # Latin-1 cannot hold it
    assert answer_character_set(chinese, requested="") == "ISO_IR 192"
    assert answer_character_set({"PatientName": "DOE^JANE"}, requested="") is None


# On orders -----------------------------------------------------------------


def test_an_institution_sees_only_its_own_open_orders(sites, order_factory):
    mine = order_factory("a", name="ZHANG^SAN")
    order_factory("b", name="ZHANG^SAN")
    answers = list(find_scheduled_steps(query(PatientName="ZHANG*", AccessionNumber=""), sites["a"].institution))
    assert [a.AccessionNumber for a in answers] == [mine.accession_number]


def test_cancelled_and_completed_orders_leave_the_worklist(sites, order_factory):
    from worklist import actions

    kept = order_factory()
    actions.do_cancel_order(order_factory(), reason="patient declined")
    actions.do_complete_order(order_factory())
    answers = list(find_scheduled_steps(query(AccessionNumber=""), sites["a"].institution))
    assert [a.AccessionNumber for a in answers] == [kept.accession_number]


def test_steps_are_found_by_station_modality_and_date_range(sites, order_factory):
    day = today()
    ct_today = order_factory(modality="CT", when=local(day, 9))
    order_factory(modality="MR", when=local(day, 9))
    ct_tomorrow = order_factory(modality="CT", when=local(day + dt.timedelta(days=1), 9))
    span = f"{day:%Y%m%d}-{day + dt.timedelta(days=1):%Y%m%d}"

    def accessions(**step):
        answers = find_scheduled_steps(query(AccessionNumber="", step=step), sites["a"].institution)
        return [a.AccessionNumber for a in answers]

    assert accessions(Modality="CT", ScheduledProcedureStepStartDate=f"{day:%Y%m%d}") == [ct_today.accession_number]
    assert accessions(ScheduledStationAETitle="ALPHA_CT", ScheduledProcedureStepStartDate=span) == [
        ct_today.accession_number,
        ct_tomorrow.accession_number,
    ]
    assert accessions(ScheduledStationAETitle="BRAVO_CT") == []


def test_an_order_is_answered_with_its_keys_filled(sites, order_factory):
    order = order_factory(name="LI^SI=李^四", priority=Order.Priority.STAT, referring_physician="WU^DR")
    identifier = query(
        PatientName="",
        PatientID="",
        AccessionNumber="",
        StudyInstanceUID="",
        RequestedProcedureID="",
        RequestedProcedureDescription="",
        RequestedProcedurePriority="",
        ReferringPhysicianName="",
        step={
            "ScheduledStationAETitle": "",
            "ScheduledProcedureStepStartDate": "",
            "ScheduledProcedureStepStartTime": "",
            "Modality": "",
            "ScheduledProcedureStepID": "",
            "ScheduledProcedureStepStatus": "",
        },
    )
    (answer,) = find_scheduled_steps(identifier, sites["a"].institution)
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "LI^SI=李^四"
    assert answer.PatientID == order.patient.patient_id
    assert answer.StudyInstanceUID == order.study_instance_uid
    assert answer.RequestedProcedureID == order.requested_procedure_id
    assert answer.RequestedProcedureDescription == "CT chest without contrast"
    assert answer.RequestedProcedurePriority == "STAT"
    assert answer.ReferringPhysicianName == "WU^DR"
    (step,) = answer.ScheduledProcedureStepSequence
    assert step.ScheduledStationAETitle == "ALPHA_CT"
    assert step.ScheduledProcedureStepStartDate == today().strftime("%Y%m%d")
    assert step.ScheduledProcedureStepStartTime == "100000"
    assert step.Modality == "CT"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"


@pytest.mark.parametrize("key", ["wang*", "WANG^XIAO*", "*小明", "王*", "ＷＡＮＧ*", "*xiao?ing", "WANG^XIAOMING"])
def test_the_database_narrowing_keeps_every_name_the_matcher_accepts(sites, order_factory, key):
    wanted = order_factory(name="WANG^XIAOMING=王^小明")
    order_factory(name="LI^NA=李^娜")
    answers = list(find_scheduled_steps(query(PatientName=key, AccessionNumber=""), sites["a"].institution))
    assert [a.AccessionNumber for a in answers] == [wanted.accession_number]
