from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from archive.ingest import IngestError, store_instance
from archive.models import Study
from archive.storage import get_storage


@pytest.fixture
def storage_dir(tmp_path, settings):
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    return tmp_path


def test_it_stores_and_indexes_a_ct_image(tenants, storage_dir):
    path = Path(get_testdata_file("CT_small.dcm"))
    result = store_instance(path, institution=tenants.a.institution)
    assert result.created
    study = Study.objects.get()
    assert study.institution == tenants.a.institution
    assert study.num_instances == 1
    with get_storage().open(result.instance.storage_key) as stored:
        assert stored.read() == path.read_bytes()


def test_an_identical_resend_is_not_stored_twice(tenants, storage_dir):
    path = Path(get_testdata_file("CT_small.dcm"))
    store_instance(path, institution=tenants.a.institution)
    again = store_instance(path, institution=tenants.a.institution)
    assert not again.created
    assert Study.objects.get().num_instances == 1


def test_a_non_dicom_file_is_refused(tenants, storage_dir, tmp_path):
    bogus = tmp_path / "note.txt"
    bogus.write_text("not an image")
    with pytest.raises(IngestError):
        store_instance(bogus, institution=tenants.a.institution)
