"""DICOMweb against a running server with a real client (dicomweb-client) and raw HTTP."""

from __future__ import annotations

import io
import json
from email.parser import BytesParser
from email.policy import HTTP

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from archive.actions import do_correct_patient_demographics
from archive.models import Instance, Patient, Study
from archive.storage import get_storage
from pacs_cloud.authentication import issue_token
from pacs_cloud.models import AuditEvent
from tests.archive.conftest import SAMPLES, differences, encode, make_ct, sample_path, with_fresh_uids
from tests.conftest import PASSWORD


@pytest.fixture
def web(live_url, tenants, storage_dir):
    """A DICOMweb client of institution a's technologist, and the base URL."""
    _, key = issue_token(tenants.a.technologist, name="test")
    client = DICOMwebClient(url=f"{live_url}/dicomweb", headers={"Authorization": f"Bearer {key}"})
    return client


def get(url: str, **kwargs):
    return requests.get(url, timeout=30, **kwargs)


def post(url: str, **kwargs):
    return requests.post(url, timeout=30, **kwargs)


def headers_for(user) -> dict[str, str]:
    _, key = issue_token(user, name="test")
    return {"Authorization": f"Bearer {key}"}


def multipart(parts: list[bytes], boundary: str = "b0undary", close: bool = True) -> bytes:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    if close:
        body += f"--{boundary}--\r\n".encode()
    return body


def stow(live_url: str, headers: dict[str, str], body: bytes, path: str = "/dicomweb/studies", boundary="b0undary"):
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return post(f"{live_url}{path}", data=body, headers={**headers, "Content-Type": content_type})


def parts_of(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response."""
    raw = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode() + response.content
    message = BytesParser(policy=HTTP).parsebytes(raw)
    # (The parser re-quotes parameters: transfer-syntax="1.2..." reads as transfer-syntax=1.2...)
    return [
        ({k: v.replace('"', "") for k, v in part.items()}, part.get_payload(decode=True))
        for part in message.iter_parts()
    ]


def test_stow_qido_and_wado_round_trip_every_transfer_syntax_byte_for_byte(web, live_url, tenants, tmp_path):
    originals = {}
    for name, (filename, _) in SAMPLES.items():
        originals[name] = with_fresh_uids(sample_path(filename), tmp_path / f"{name}.dcm")
    datasets = [pydicom.dcmread(p) for p in originals.values()]
    response = web.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "FailedSOPSequence" not in response
    for name, path in originals.items():
        original = pydicom.dcmread(path)
        found = web.search_for_instances(
            study_instance_uid=original.StudyInstanceUID, search_filters={"SOPInstanceUID": original.SOPInstanceUID}
        )
        assert len(found) == 1, name
        assert found[0]["00083002"]["Value"] == [original.file_meta.TransferSyntaxUID]
        retrieved = web.retrieve_instance(
            original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
        )
        assert retrieved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, name
        assert retrieved.PixelData == original.PixelData, name
        assert differences(encode(retrieved), path) == [], name


def test_qido_searches_studies_series_and_instances(web, live_url, tenants, tmp_path):
    first = make_ct(patient_id="Q1", patient_name="QIDO^ALPHA", accession="ACC-Q1", study_date="20240115")
    second = make_ct(
        patient_id="Q2", patient_name="QIDO^BRAVO", accession="ACC-Q2", study_date="20240620", modality="MR"
    )
    extra = make_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, instance_number=2,
                    patient_id="Q1", patient_name="QIDO^ALPHA", accession="ACC-Q1", study_date="20240115")  # fmt: skip
    web.store_instances([first, second, extra])
    assert {s["00100020"]["Value"][0] for s in web.search_for_studies(search_filters={"PatientName": "QIDO*"})} == {
        "Q1",
        "Q2",
    }
    (study,) = web.search_for_studies(search_filters={"PatientID": "Q1"})
    assert study["00201208"]["Value"] == [2]
    assert study["00080061"]["Value"] == ["CT"]
    assert study["0020000D"]["Value"] == [first.StudyInstanceUID]
    assert study["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{first.StudyInstanceUID}")
    in_range = web.search_for_studies(search_filters={"StudyDate": "20240601-20241231"})
    assert [s["00100020"]["Value"][0] for s in in_range] == ["Q2"]
    assert [s["00100020"]["Value"][0] for s in web.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})] == [
        "Q2"
    ]
    series = web.search_for_series(first.StudyInstanceUID)
    assert len(series) == 1 and series[0]["00201209"]["Value"] == [2]
    instances = web.search_for_instances(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert sorted(i["00200013"]["Value"][0] for i in instances) == [1, 2]
    all_series = web.search_for_series(search_filters={"Modality": "MR"})
    assert [s["00100020"]["Value"][0] for s in all_series] == ["Q2"]  # unscoped: says whose series it is
    # includefield for an attribute the index does not hold: from the stored metadata.
    (with_rows,) = web.search_for_studies(search_filters={"PatientID": "Q1"}, fields=["PatientSex", "00280010"])
    assert with_rows["00280010"]["Value"] == [16]
    assert AuditEvent.objects.filter(action="archive.dicomweb.search").count() >= 7


def test_qido_limit_and_offset_page_and_warn(web, live_url, tenants):
    web.store_instances([make_ct(patient_id=f"PAGE{i}", patient_name=f"PAGE^{i}") for i in range(5)])
    headers = headers_for(tenants.a.radiologist)
    response = get(f"{live_url}/dicomweb/studies?PatientName=PAGE*&limit=2&offset=1", headers=headers)
    assert response.status_code == 200
    assert len(response.json()) == 2
    assert "more results" in response.headers["Warning"]
    unknown = get(f"{live_url}/dicomweb/studies?OperatorsName=X", headers=headers)
    assert "not supported" in unknown.headers["Warning"]
    bad = get(f"{live_url}/dicomweb/studies?StudyDate=2024-13-45", headers=headers)
    assert bad.status_code == 400


def test_a_bearer_search_is_answered_audited_and_sent_with_the_security_headers(web, live_url, tenants):
    web.store_instances([make_ct(patient_id="LEAN1", patient_name="LEAN^ONE")])
    headers = headers_for(tenants.a.radiologist)
    before = AuditEvent.objects.filter(action="archive.dicomweb.search").count()
    response = get(f"{live_url}/dicomweb/studies?PatientID=LEAN1", headers=headers)
    assert response.status_code == 200
    assert [s["00100020"]["Value"][0] for s in response.json()] == ["LEAN1"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Length"] == str(len(response.content))
    assert AuditEvent.objects.filter(action="archive.dicomweb.search").count() == before + 1
    outsider = get(f"{live_url}/dicomweb/studies?PatientID=LEAN1", headers=headers_for(tenants.c.radiologist))
    assert outsider.status_code == 200 and outsider.json() == []
    refused = get(f"{live_url}/dicomweb/studies", headers={"Authorization": "Bearer not-a-token"})
    assert refused.status_code == 401


def test_a_gb18030_name_is_found_by_wildcard_and_returned_intact(web, live_url, tenants, tmp_path):
    path = with_fresh_uids(sample_path("chrX2.dcm"), tmp_path / "gb.dcm")
    web.store_instances([pydicom.dcmread(path)])
    # dicomweb-client percent-encodes the value; the server must decode it.
    (study,) = web.search_for_studies(search_filters={"PatientName": "王*"})
    assert study["00100010"]["Value"] == [{"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}]
    headers = headers_for(tenants.a.radiologist)
    raw = get(f"{live_url}/dicomweb/studies?PatientName=%E7%8E%8B%2A", headers=headers)
    assert [s["00100010"]["Value"][0]["Ideographic"] for s in raw.json()] == ["王^小东"]
    assert raw.headers["Content-Type"].startswith("application/dicom+json")
    by_alphabetic = get(f"{live_url}/dicomweb/studies?PatientName=wang%5E%2A", headers=headers).json()
    assert len(by_alphabetic) == 1
    fuzzy = get(f"{live_url}/dicomweb/studies?PatientName=xiao&fuzzymatching=true", headers=headers).json()
    assert len(fuzzy) == 1
    given_name = get(f"{live_url}/dicomweb/studies?PatientName=小东&fuzzymatching=true", headers=headers)
    assert len(given_name.json()) == 1
    typed_together = get(f"{live_url}/dicomweb/studies?PatientName=王小东&fuzzymatching=true", headers=headers)
    assert len(typed_together.json()) == 1
    assert get(f"{live_url}/dicomweb/studies?PatientName=xiao", headers=headers).json() == []


def test_wado_retrieves_a_series_as_a_stream_of_parts(web, live_url, tenants):
    first = make_ct(size=64)
    series = [first] + [
        make_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, instance_number=n, size=64)
        for n in (2, 3)
    ]
    web.store_instances(series)
    headers = headers_for(tenants.a.clinician)
    url = f"{live_url}/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    response = get(url, headers={**headers, "Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    assert "Content-Length" not in response.headers  # streamed
    parts = parts_of(response)
    assert len(parts) == 3
    assert all("transfer-syntax=1.2.840.10008.1.2.1" in h["Content-Type"] for h, _ in parts)
    uids = {pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID for _, body in parts}
    assert uids == {ds.SOPInstanceUID for ds in series}
    assert AuditEvent.objects.filter(action="archive.study.retrieve", actor=tenants.a.clinician.username).count() == 1


def test_wado_without_a_transfer_syntax_gives_explicit_little_endian(web, live_url, tenants, tmp_path):
    path = with_fresh_uids(sample_path("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "jpeg.dcm")
    original = pydicom.dcmread(path)
    web.store_instances([original])
    headers = headers_for(tenants.a.radiologist)
    url = (
        f"{live_url}/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
        f"/instances/{original.SOPInstanceUID}"
    )
    response = get(url, headers={**headers, "Accept": 'multipart/related; type="application/dicom"'})
    ((part_headers, body),) = parts_of(response)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in part_headers["Content-Type"]
    decoded = pydicom.dcmread(io.BytesIO(body))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (decoded.pixel_array == original.pixel_array).all()
    refused = get(url, headers={**headers, "Accept": "image/png"})
    assert refused.status_code == 406


def test_metadata_and_frames(web, live_url, tenants, tmp_path):
    multi = with_fresh_uids(sample_path("emri_small.dcm"), tmp_path / "multi.dcm")
    jpeg = with_fresh_uids(sample_path("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "jpeg.dcm")
    web.store_instances([pydicom.dcmread(multi), pydicom.dcmread(jpeg)])
    original = pydicom.dcmread(multi)
    metadata = web.retrieve_instance_metadata(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    assert metadata["00280008"]["Value"] == [10]
    assert metadata["7FE00010"]["BulkDataURI"].endswith(f"/instances/{original.SOPInstanceUID}/bulk/7FE00010")
    frames = web.retrieve_instance_frames(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID, frame_numbers=[2, 10]
    )
    frame_size = original.Rows * original.Columns * 2
    assert frames == [original.PixelData[frame_size : 2 * frame_size], original.PixelData[9 * frame_size :]]
    headers = headers_for(tenants.a.radiologist)
    base = f"{live_url}/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
    out_of_range = get(f"{base}/instances/{original.SOPInstanceUID}/frames/11", headers=headers)
    assert out_of_range.status_code == 404
    bulk = get(metadata["7FE00010"]["BulkDataURI"], headers=headers)
    assert parts_of(bulk)[0][1] == original.PixelData
    compressed = pydicom.dcmread(jpeg)
    url = (
        f"{live_url}/dicomweb/studies/{compressed.StudyInstanceUID}/series/{compressed.SeriesInstanceUID}"
        f"/instances/{compressed.SOPInstanceUID}/frames/1"
    )
    as_jpeg = get(url, headers={**headers, "Accept": 'multipart/related; type="image/jpeg"'})
    ((part_headers, body),) = parts_of(as_jpeg)
    assert part_headers["Content-Type"].startswith("image/jpeg")
    assert body == pydicom.encaps.generate_frames(compressed.PixelData, number_of_frames=1).__next__()
    decoded = get(url, headers={**headers, "Accept": 'multipart/related; type="application/octet-stream"'})
    assert parts_of(decoded)[0][1] == compressed.pixel_array.tobytes()


def test_another_institution_sees_nothing_and_gets_404(web, live_url, tenants):
    ds = make_ct(patient_id="PRIVATE1")
    web.store_instances([ds])
    outsider = headers_for(tenants.c.radiologist)
    assert get(f"{live_url}/dicomweb/studies?PatientID=PRIVATE1", headers=outsider).json() == []
    base = f"{live_url}/dicomweb/studies/{ds.StudyInstanceUID}"
    for url in (
        base,
        f"{base}/metadata",
        f"{base}/series",
        f"{base}/series/{ds.SeriesInstanceUID}",
        f"{base}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        f"{base}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1",
    ):
        assert get(url, headers=outsider).status_code == 404, url
    assert get(f"{base}/metadata").status_code == 401
    basic = get(f"{base}/metadata", auth=(tenants.a.clinician.username, PASSWORD))
    assert basic.status_code == 200


def test_corrected_demographics_go_out_on_every_retrieval(web, live_url, tenants):
    ds = make_ct(patient_id="FIX1", patient_name="WRONG^NAME")
    web.store_instances([ds])
    patient = Patient.objects.get(patient_id="FIX1")
    do_correct_patient_demographics(patient, acting_user=tenants.a.technologist, name="RIGHT^NAME", reason="typo")
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    with get_storage().open(instance.storage_key) as handle:
        assert b"WRONG^NAME" in handle.read()  # the object as received is kept
    retrieved = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert str(retrieved.PatientName) == "RIGHT^NAME"
    assert retrieved.PixelData == ds.PixelData
    (metadata,) = web.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "RIGHT^NAME"}]
    (study,) = web.search_for_studies(search_filters={"PatientName": "RIGHT*"})
    assert study["00100010"]["Value"] == [{"Alphabetic": "RIGHT^NAME"}]
    # The modality keeps sending the old name: still this patient's study.
    late = make_ct(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, patient_id="FIX1",
                   patient_name="WRONG^NAME", instance_number=2)  # fmt: skip
    web.store_instances([late])
    assert Study.objects.get(study_instance_uid=ds.StudyInstanceUID).num_instances == 2


# STOW-RS: bad input, each refused on its own --------------------------------------------


def failures(response: requests.Response) -> list[dict]:
    return response.json().get("00081198", {}).get("Value", [])


def test_stow_reports_each_bad_instance_and_keeps_the_good_ones(live_url, tenants, storage_dir, settings):
    headers = headers_for(tenants.a.technologist)
    good = make_ct(patient_id="STOW1")
    truncated = encode(make_ct(patient_id="STOW2", size=64))
    bad_uid = make_ct(patient_id="STOW3")
    bad_uid.SOPInstanceUID = "1.2.3/../../etc"
    buffer = io.BytesIO()
    bad_uid.save_as(buffer, enforce_file_format=False)
    response = stow(
        live_url,
        headers,
        multipart([encode(good), b"this is a scanned letter, not an image", truncated[: len(truncated) - 3000],
                   buffer.getvalue()]),
    )  # fmt: skip
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1
    reasons = [f["00000902"]["Value"][0] for f in failures(response)]
    assert len(reasons) == 3
    assert "not DICOM" in reasons[0]
    assert "cut short" in reasons[1]
    assert "not a valid DICOM UID" in reasons[2]
    assert Instance.objects.count() == 1


def test_stow_with_a_broken_multipart_body(live_url, tenants, storage_dir):
    headers = headers_for(tenants.a.technologist)
    first, second = make_ct(patient_id="MP1"), make_ct(patient_id="MP2")
    body = multipart([encode(first)])[: -len("--b0undary--\r\n")]
    body += b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + encode(second)[:5000]  # no closing boundary
    response = stow(live_url, headers, body)
    assert response.status_code == 202
    (failure,) = failures(response)
    assert "closing boundary" in failure["00000902"]["Value"][0]
    assert Instance.objects.get().sop_instance_uid == first.SOPInstanceUID
    no_boundary = stow(live_url, headers, b"garbage without any boundary")
    assert no_boundary.status_code == 400
    not_multipart = post(
        f"{live_url}/dicomweb/studies", data=encode(first), headers={**headers, "Content-Type": "application/dicom"}
    )
    assert not_multipart.status_code == 415


def test_stow_refuses_too_large_conflicting_and_wrong_study_instances(live_url, tenants, storage_dir, settings):
    headers = headers_for(tenants.a.technologist)
    archived = make_ct(patient_id="C1")
    assert stow(live_url, headers, multipart([encode(archived)])).status_code == 200
    archived.SeriesDescription = "EDITED"
    conflict = stow(live_url, headers, multipart([encode(archived)]))
    assert conflict.status_code == 409
    (failure,) = failures(conflict)
    assert failure["00081197"]["Value"] == [0x0111]
    assert failure["00081155"]["Value"] == [archived.SOPInstanceUID]
    other_study = stow(live_url, headers, multipart([encode(make_ct(patient_id="C1"))]),
                       path=f"/dicomweb/studies/{archived.StudyInstanceUID}")  # fmt: skip
    assert other_study.status_code == 409
    assert "belongs to study" in failures(other_study)[0]["00000902"]["Value"][0]
    settings.MAX_INSTANCE_BYTES = 2000
    too_large = stow(live_url, headers, multipart([encode(make_ct(size=64))]))
    assert "limit" in failures(too_large)[0]["00000902"]["Value"][0]
    assert Instance.objects.count() == 1


def test_stow_needs_a_role_that_stores(live_url, tenants, storage_dir):
    response = stow(live_url, headers_for(tenants.a.clinician), multipart([encode(make_ct())]))
    assert response.status_code == 403
    assert json.loads(response.content)["detail"].startswith("storing images needs")


def test_metadata_not_yet_indexed_is_read_from_the_stored_object(web, live_url, tenants):
    ds = make_ct(patient_id="LATE1")
    web.store_instances([ds])
    Instance.objects.update(metadata={})
    metadata = web.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert metadata["00100020"]["Value"] == ["LATE1"]
    assert Instance.objects.get().metadata["00100020"]["Value"] == ["LATE1"]
