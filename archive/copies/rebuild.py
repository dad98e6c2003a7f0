"""Rebuilding the index from the stored objects themselves (they are self-describing).

For the day the database and its standby are both lost: every object of a
location is read, its key says its institution (``object_key``), its header
says its patient, study, series and instance. Rows that survived are kept and
only given the copy they lack; an object whose SOP instance is indexed with
other content is reported, never indexed twice.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pydicom
from django.db import transaction
from django.utils import timezone

from pacs_cloud import audit
from pacs_cloud.models import Institution

from .. import ingest
from ..models import Instance, ObjectCopy, StorageLocation
from ..storage import FileSystemStorage, S3Storage, Storage, TieredStorage
from . import locations

log = logging.getLogger(__name__)

# <institution uuid>/<study uid>/<series uid>/<sop uid>[.<version>].dcm (archive.storage.object_key)
_KEY = re.compile(
    r"(?P<institution>[0-9a-fA-F-]{36})/(?P<study>[0-9.]+)/(?P<series>[0-9.]+)/(?P<sop>[0-9.]+?)(?:\.[0-9a-f]{8,64})?\.dcm"
)


@dataclass
class RebuildReport:
    objects: int = 0
    indexed: int = 0
    already: int = 0  # surviving rows, given this location's copy if they lacked it
    institutions_restored: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def stored_keys(storage: Storage) -> Iterator[str]:
    """Every object key in a location (archived objects only: not conflicts, probes or staging files)."""
    if isinstance(storage, TieredStorage):
        seen = set()
        for key in stored_keys(storage.store):
            seen.add(key)
            yield key
        for key in stored_keys(storage.cache):
            if key not in seen:
                yield key
        return
    if isinstance(storage, FileSystemStorage):
        root = storage.root.resolve()
        for path in sorted(root.rglob("*.dcm")):
            key = path.relative_to(root).as_posix()
            if _KEY.fullmatch(key):
                yield key
        return
    if isinstance(storage, S3Storage):
        pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=storage.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(storage.prefix) :]
                if _KEY.fullmatch(key):
                    yield key
        return
    raise TypeError(f"cannot list the objects of {type(storage).__name__}")


def do_rebuild_index(location_name: str, *, acting_label: str = "rebuild_index") -> RebuildReport:
    """Index every object stored in the named location that the index lacks (idempotent)."""
    location = StorageLocation.objects.get(name=location_name)
    storage = locations.backend(location)
    report = RebuildReport()
    session = ingest.IngestSession(ingest.Source("rebuild", location_name[:64]))
    for key in stored_keys(storage):
        report.objects += 1
        try:
            _rebuild_one(storage, location, key, session, report)
        except Exception as exc:  # one unreadable object must not stop the rebuild; it is reported
            log.exception("could not index %s", key)
            report.problems.append(f"{key}: {exc}")
    audit.record(
        "archive.index.rebuild",
        actor_label=acting_label,
        object_type="archive.storagelocation",
        object_id=location.pk,
        detail={
            "location": location.name,
            "objects": report.objects,
            "indexed": report.indexed,
            "already": report.already,
            "problems": len(report.problems),
        },
    )
    return report


def _institution(institution_id: str, report: RebuildReport) -> Institution:
    found = Institution.objects.filter(pk=institution_id).first()
    if found is not None:
        return found
    # The tenancy rows were lost too: a placeholder the platform administrator renames.
    restored, created = Institution.objects.get_or_create(
        pk=institution_id,
        defaults={"slug": f"restored-{institution_id[:8]}", "name": f"Restored institution {institution_id}"},
    )
    if created:
        report.institutions_restored.append(institution_id)
    return restored


def _rebuild_one(
    storage: Storage, location: StorageLocation, key: str, session: ingest.IngestSession, report: RebuildReport
) -> None:
    match = _KEY.fullmatch(key)
    assert match is not None
    existing = Instance.objects.filter(institution_id=match["institution"], sop_instance_uid=match["sop"]).first()
    if existing is not None:
        _reconcile(existing, location, key, report)
        return
    with storage.open(key) as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024, force=True)
    uids = ingest._require_uids(ds)
    if (uids[0], uids[1], uids[2]) != (match["study"], match["series"], match["sop"]):
        report.problems.append(f"{key}: the object's UIDs differ from its key")
        return
    institution = _institution(match["institution"], report)
    pixel_offset, pixel_length = ingest._check_complete(ds, len(data), 0)
    obj = ingest._Object(transfer_syntax=str(ds.file_meta.TransferSyntaxUID), header=b"", size=len(data))
    obj.sha256 = digest
    with transaction.atomic():
        instance = ingest._new_instance(obj, ds, uids, key, "stored", pixel_offset, pixel_length, institution, session)
        ingest._index(instance, ds, uids, session)  # what it announces (routing, copies) is not run: a rebuild
        if not location.is_default:
            # Ingest's own copy row says "default location"; this object is known to be here.
            ObjectCopy.objects.filter(instance=instance).delete()
            _record_copy(instance, location, key, digest, len(data))
    report.indexed += 1


def _reconcile(existing: Instance, location: StorageLocation, key: str, report: RebuildReport) -> None:
    report.already += 1
    if existing.storage_key != key:
        report.problems.append(f"{key}: SOP instance indexed already with other content ({existing.storage_key})")
        return
    if not ObjectCopy.objects.filter(instance=existing, location=location).exists():
        _record_copy(existing, location, key, existing.sha256, existing.size)


def _record_copy(instance: Instance, location: StorageLocation, key: str, sha256: str, size: int) -> None:
    ObjectCopy.objects.get_or_create(
        instance=instance,
        location=location,
        defaults={"key": key, "size": size, "sha256": sha256, "written_at": timezone.now()},
    )
