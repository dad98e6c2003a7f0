"""Matching rules shared by QIDO-RS and C-FIND (PS3.4 C.2.2.2), on the index itself."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from archive import names
from archive import query as q
from archive.ingest import store_instance
from archive.models import Study
from tests.archive.conftest import make_ct, write


def test_person_name_forms():
    forms = names.name_forms("Müller^Hans^^Dr=慕勒^汉斯=")
    assert forms.alphabetic == "MULLER^HANS^^DR"
    assert forms.ideographic == "慕勒^汉斯"
    assert " 慕勒汉斯 " in forms.words and " HANS " in forms.words
    assert names.query_groups("Wang*") == [("any", "Wang*")]
    assert names.query_groups("=王*") == [("ideographic", "王*")]


@pytest.fixture
def archived(tenants, storage_dir, tmp_path):
    def store(**kwargs) -> Study:
        ds = make_ct(**kwargs)
        store_instance(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), institution=tenants.a.institution)
        return Study.objects.get(study_instance_uid=ds.StudyInstanceUID)

    return store


def search(tenants, level=q.STUDY, fuzzy=False, **keys) -> list:
    query = q.Query(level=level, keys={q.BY_KEYWORD[k].tag: v for k, v in keys.items()}, fuzzy=fuzzy)
    rows, _ = q.search(query, Study.objects.filter(institution=tenants.a.institution), maximum=100)
    return rows


def test_a_family_name_alone_matches_and_case_does_not_matter(tenants, archived):
    wang = archived(patient_id="1", patient_name="WANG^XIAODONG")
    archived(patient_id="2", patient_name="WANGARI^MAATHAI")
    assert search(tenants, PatientName="wang") == [wang]
    assert len(search(tenants, PatientName="WANG*")) == 2
    assert search(tenants, PatientName="W?NG^X*") == [wang]


def test_sql_wildcards_in_a_value_are_literal(tenants, archived):
    literal = archived(patient_id="1", accession="A_1%")
    archived(patient_id="2", accession="AB1X")
    assert search(tenants, AccessionNumber="A_1%") == [literal]
    assert search(tenants, AccessionNumber="A_1*") == [literal]


def test_modalities_in_study_match_whole_codes(tenants, archived):
    mr = archived(patient_id="1", modality="MR")
    archived(patient_id="2", modality="CT")
    assert search(tenants, ModalitiesInStudy="MR") == [mr]
    assert len(search(tenants, ModalitiesInStudy="MR\\CT")) == 2
    assert search(tenants, ModalitiesInStudy="M") == []


def test_uid_lists_and_ranges(tenants, archived):
    first = archived(patient_id="1", study_date="20240105")
    second = archived(patient_id="2", study_date="20240305")
    archived(patient_id="3", study_date="20240505")
    uids = f"{first.study_instance_uid},{second.study_instance_uid}"
    assert {s.pk for s in search(tenants, StudyInstanceUID=uids)} == {first.pk, second.pk}
    assert search(tenants, StudyDate="20240201-20240401") == [second]
    assert len(search(tenants, StudyDate="-20240401")) == 2
    assert len(search(tenants, StudyTime="1000-1030")) == 3
    assert search(tenants, StudyTime="1100-") == []
    with pytest.raises(q.QueryError):
        search(tenants, StudyDate="2024-02-30")


def test_series_match_on_their_request_attributes(tenants, storage_dir, tmp_path):
    ds = make_ct(patient_id="REQ1")
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS42"
    item.RequestedProcedureID = "RP7"
    ds.RequestAttributesSequence = [item]
    store_instance(write(ds, tmp_path / "req.dcm"), institution=tenants.a.institution)
    query = q.Query(level=q.SERIES, request_keys={"00400009": "SPS42"})
    rows, _ = q.search(query, Study.objects.all(), maximum=10)
    assert [s.series_instance_uid for s in rows] == [ds.SeriesInstanceUID]
    answer = q.attributes_of(rows[0], q.SERIES, ["00400275"], q.Context())
    assert answer["00400275"]["Value"][0]["00400009"]["Value"] == ["SPS42"]
    assert (
        q.search(q.Query(level=q.SERIES, request_keys={"00400009": "SPS43"}), Study.objects.all(), maximum=10)[0] == []
    )


def test_more_results_than_allowed_are_cut_and_say_so(tenants, archived):
    for index in range(4):
        archived(patient_id=f"M{index}")
    rows, more = q.search(q.Query(level=q.STUDY), Study.objects.all(), maximum=3)
    assert len(rows) == 3 and more
