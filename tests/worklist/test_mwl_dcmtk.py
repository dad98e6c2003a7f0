"""The Modality Worklist SCP answering dcmtk's findscu -W over a real association."""

import datetime as dt
import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from archive.dimse import start_server
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, free_port
from worklist.models import Order

from .conftest import local, today

pytestmark = [pytest.mark.dcmtk]

PROVIDERS = ["worklist.dimse.services"]


@pytest.fixture
def scp(sites, transactional_db):
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port, providers=PROVIDERS)
    yield port
    server.shutdown()


def findscu(port: int, calling: str, keys: list, out: Path) -> list[Dataset]:
    """Run findscu -W with ``keys`` (str or already-encoded bytes); the responses it extracted."""
    out.mkdir(parents=True, exist_ok=True)
    args: list = ["findscu", "-W", "-aet", calling, "-aec", "PACSCLOUD", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    result = subprocess.run(args, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=30)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


STEP = "ScheduledProcedureStepSequence[0]."


def test_an_order_registered_through_the_api_reaches_the_modality(scp, sites, tenants, order_factory, tmp_path):
    registered = api_client(tenants.a.technologist).post(
        "/api/v1/orders/",
        {
            "patient": {"name": "ZHANG^WEI", "patient_id": "ACH-5", "birth_date": "1981-04-05", "sex": "M"},
            "procedure": str(sites["a"].ct.pk),
            "station": str(sites["a"].ct_station.pk),
            "scheduled_at": local(today(), 10).isoformat(),
            "priority": "urgent",
            "clinical_info": "cough for 3 weeks",
        },
        format="json",
    )
    assert registered.status_code == 201
    order = Order.objects.get(pk=registered.json()["id"])
    order_factory(modality="MR")
    keys = [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "RequestedProcedurePriority",
        "ReasonForTheRequestedProcedure",
        f"{STEP}ScheduledStationAETitle=ALPHA_CT",
        f"{STEP}ScheduledProcedureStepStartDate={today():%Y%m%d}",
        f"{STEP}ScheduledProcedureStepStartTime",
        f"{STEP}Modality",
        f"{STEP}ScheduledProcedureStepID",
        f"{STEP}ScheduledProcedureStepDescription",
    ]
    (answer,) = findscu(scp, "ALPHA_CT", keys, tmp_path)
    assert answer.PatientName == "ZHANG^WEI"
    assert answer.PatientID == "ACH-5"
    assert answer.PatientBirthDate == "19810405"
    assert answer.PatientSex == "M"
    assert answer.AccessionNumber == order.accession_number
    assert answer.StudyInstanceUID == order.study_instance_uid
    assert answer.RequestedProcedureID == order.requested_procedure_id
    assert answer.RequestedProcedurePriority == "HIGH"
    assert answer.ReasonForTheRequestedProcedure == "cough for 3 weeks"
    step = answer.ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationAETitle == "ALPHA_CT"
    assert step.Modality == "CT"
    assert step.ScheduledProcedureStepStartTime == "100000"
    assert step.ScheduledProcedureStepID == order.sps_id
    assert step.ScheduledProcedureStepDescription == "CT chest without contrast"

    # Another institution's modality sees none of it; another of ours sees it all.
    keys = ["PatientName=*", "AccessionNumber", f"{STEP}Modality"]
    assert findscu(scp, "BRAVO_CT", keys, tmp_path / "bravo") == []
    assert len(findscu(scp, "ALPHA_MR", keys, tmp_path / "alpha")) == 2


def test_date_ranges_and_wild_cards_behave_as_the_standard_says(scp, sites, order_factory, tmp_path):
    day = today()
    yesterday, tomorrow = day - dt.timedelta(days=1), day + dt.timedelta(days=1)
    order_factory(name="WANG^XIAOMING", when=local(yesterday, 8))
    order_factory(name="WANG^LEI", when=local(day, 9))
    order_factory(name="LI^NA", when=local(tomorrow, 16, 30))

    def names(*keys: str) -> list[str]:
        out = tmp_path / f"q{len(list(tmp_path.iterdir()))}"
        return sorted(str(a.PatientName) for a in findscu(scp, "ALPHA_CT", ["PatientName", *keys], out))

    date = f"{STEP}ScheduledProcedureStepStartDate"
    assert names(f"{date}={day:%Y%m%d}-") == ["LI^NA", "WANG^LEI"]
    assert names(f"{date}=-{day:%Y%m%d}") == ["WANG^LEI", "WANG^XIAOMING"]
    assert names(f"{date}={yesterday:%Y%m%d}-{tomorrow:%Y%m%d}") == ["LI^NA", "WANG^LEI", "WANG^XIAOMING"]
    assert names(f"{STEP}ScheduledProcedureStepStartTime=0900-1700") == ["LI^NA", "WANG^LEI"]
    assert names("PatientName=WANG*") == ["WANG^LEI", "WANG^XIAOMING"]
    assert names("PatientName=wang^?ei") == ["WANG^LEI"]
    assert names("PatientName=WANG") == []


@pytest.mark.parametrize(
    ("character_set", "encoding", "key"),
    [("GB18030", "gb18030", "王*"), ("ISO_IR 192", "utf-8", "*小东")],
)
def test_a_chinese_name_round_trips(scp, sites, order_factory, tmp_path, character_set, encoding, key):
    name = "WANG^XIAODONG=王^小东=wang^xiao dong"
    order_factory(name=name, referring_physician="LI^YISHENG=李^医生")
    keys = [
        f"SpecificCharacterSet={character_set}".encode(),
        f"PatientName={key}".encode(encoding),
        b"ReferringPhysicianName",
    ]
    (answer,) = findscu(scp, "ALPHA_CT", keys, tmp_path)
    assert answer.SpecificCharacterSet == character_set
    assert str(answer.PatientName) == name
    assert answer.PatientName.ideographic == "王^小东"
    assert str(answer.ReferringPhysicianName) == "LI^YISHENG=李^医生"


def test_a_station_configured_for_gb18030_gets_gb18030(scp, sites, order_factory, tmp_path):
    station = sites["a"].ct_station
    station.character_set = "GB18030"
    station.save()
    order_factory(name="LIU^YANG=刘^洋")
    (answer,) = findscu(scp, "ALPHA_CT", ["PatientName"], tmp_path)
    assert answer.SpecificCharacterSet == "GB18030"
    assert str(answer.PatientName) == "LIU^YANG=刘^洋"


def _pynetdicom_find(port: int, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="ALPHA_CT")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCLOUD")
    assert assoc.is_established
    try:
        return [(status.Status, ds) for status, ds in assoc.send_c_find(identifier, ModalityWorklistInformationFind)]
    finally:
        assoc.release()


def test_a_malformed_key_fails_and_an_unsupported_one_warns(scp, sites, order_factory):
    order_factory()
    identifier = Dataset()
    identifier.PatientName = ""
    step = Dataset()
    step.ScheduledProcedureStepStartDate = "2024-01-01"
    identifier.ScheduledProcedureStepSequence = [step]
    ((status, _),) = _pynetdicom_find(scp, identifier)
    assert status == 0xA900

    identifier = Dataset()
    identifier.PatientName = ""
    identifier.PatientComments = "VIP"  # not a worklist key we match on
    responses = _pynetdicom_find(scp, identifier)
    assert [status for status, _ in responses] == [0xFF01, 0x0000]
    assert responses[0][1].PatientComments in (None, "")


def test_a_worklist_query_is_audited_once_its_association_ends(scp, sites, order_factory):
    order_factory()
    identifier = Dataset()
    identifier.PatientName = ""
    responses = _pynetdicom_find(scp, identifier)
    assert [status for status, _ in responses] == [0xFF00, 0x0000]
    deadline = time.monotonic() + 10
    while not (events := list(AuditEvent.objects.filter(action="worklist.mwl.query"))):
        assert time.monotonic() < deadline, "the query was never audited"
        time.sleep(0.05)
    (event,) = events
    assert event.actor == "AE ALPHA_CT"
    assert event.institution_id == sites["a"].institution.pk
    assert event.detail == {"matches": 1}
