"""``manage.py rebuild_index``: the index rebuilt from the stored objects, byte-identical answers included."""

from __future__ import annotations

import io
import shutil
import uuid

import pytest
from django.core.management import call_command

from archive.models import Instance, ObjectCopy, Patient, Series, Study
from pacs_cloud.models import AuditEvent, Institution
from tests.archive.conftest import make_ct, write
from tests.archive.test_dicomweb import get, headers_for, parts_of
from tests.samples import store_sample_study


def archive_of_two_studies(tenants, tmp_path) -> list[str]:
    from archive.ingest import store_instance

    uids = []
    for number, (name, frames) in enumerate((("张三", 1), ("李四", 3))):
        study = make_ct().StudyInstanceUID
        series = make_ct().SeriesInstanceUID
        for index in range(2):
            ds = make_ct(
                study_uid=study,
                series_uid=series,
                patient_id=f"P{number}",
                patient_name=name,
                charset="ISO_IR 192",
                instance_number=index + 1,
                frames=frames,
                seed=10 * number + index,
            )
            store_instance(write(ds, tmp_path / f"{number}-{index}.dcm"), institution=tenants.a.institution)
        uids.append(study)
    store_sample_study(
        tenants.a.institution, patient_name="王五", patient_id="P9", accession="ACC9"
    )  # a real modality's CT beside the synthetic ones
    return uids + [Study.objects.exclude(study_instance_uid__in=uids).get().study_instance_uid]


def answers(live_url: str, headers: dict, study_uids: list[str]) -> dict:
    """What DICOMweb answers about each study: QIDO-RS, WADO-RS objects and metadata."""
    found = {}
    for uid in study_uids:
        objects = get(f"{live_url}/dicomweb/studies/{uid}", headers=headers)
        metadata = get(f"{live_url}/dicomweb/studies/{uid}/metadata", headers=headers)
        search = get(f"{live_url}/dicomweb/studies", params={"StudyInstanceUID": uid}, headers=headers)
        assert objects.status_code == metadata.status_code == search.status_code == 200
        found[uid] = (
            sorted(body for _, body in parts_of(objects)),
            sorted(metadata.json(), key=lambda item: item["00080018"]["Value"][0]),
            search.json(),
        )
    return found


def lose_the_index() -> None:
    ObjectCopy.objects.all().delete()
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()


def test_rebuild_index_restores_every_study_with_byte_identical_dicomweb_answers(
    live_url, tenants, storage_dir, tmp_path
):
    studies = archive_of_two_studies(tenants, tmp_path)
    headers = headers_for(tenants.a.radiologist)
    before = answers(live_url, headers, studies)
    count = Instance.objects.count()
    lose_the_index()

    out = io.StringIO()
    call_command("rebuild_index", "--location", "primary", stdout=out)
    assert f"{count} objects in primary: {count} indexed, 0 already in the index, 0 problems" in out.getvalue()
    assert answers(live_url, headers, studies) == before
    assert ObjectCopy.objects.count() == count
    assert AuditEvent.objects.filter(action="archive.index.rebuild").count() == 1

    # Again, and after part of the index survived: nothing is indexed twice.
    Study.objects.get(study_instance_uid=studies[0]).delete()
    out = io.StringIO()
    call_command("rebuild_index", "--location", "primary", stdout=out)
    assert f"{count} objects in primary: 2 indexed, {count - 2} already in the index, 0 problems" in out.getvalue()
    assert Instance.objects.count() == count and ObjectCopy.objects.count() == count
    assert answers(live_url, headers, studies) == before


def test_objects_of_an_institution_the_database_lost_come_back_under_a_placeholder(tenants, storage_dir, tmp_path, db):
    from archive.ingest import store_instance

    instance = store_instance(write(make_ct(), tmp_path / "one.dcm"), institution=tenants.a.institution).instance
    lost = str(uuid.uuid4())
    target = storage_dir / instance.storage_key.replace(str(tenants.a.institution.pk), lost)
    target.parent.mkdir(parents=True)
    shutil.copy(storage_dir / instance.storage_key, target)
    (storage_dir / "conflicts").mkdir()
    (storage_dir / "conflicts" / "kept.dcm").write_bytes(b"not an archived object")
    out = io.StringIO()
    call_command("rebuild_index", "--location", "primary", stdout=out)
    assert f"institution {lost} restored as a placeholder" in out.getvalue()
    assert "2 objects in primary: 1 indexed, 1 already in the index" in out.getvalue()
    restored = Institution.objects.get(pk=lost)
    assert Study.objects.filter(institution=restored).count() == 1


def test_an_unknown_location_is_refused(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no storage location 'elsewhere'"):
        call_command("rebuild_index", "--location", "elsewhere")
