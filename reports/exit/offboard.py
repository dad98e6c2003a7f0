"""Removing an institution: every stored object, every row, and the certificate that says so.

What stays is what the law keeps: the audit trail (``AuditEvent``, which
never had foreign keys for this reason) and the exit jobs with their
certificate. Everything else that names the institution goes, found
generically: every row of every model with a foreign key to the institution,
and every row that protects one of those from deletion (a signed version
protects its report, a report its study), recursively, so a model added later
is covered without a change here. Clinical rows of *another* institution are
never deleted on the way: the purge stops with an error instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections import Counter, defaultdict
from typing import Any

from django.apps import apps
from django.contrib.auth.models import Group
from django.db import connection, models, transaction
from django.db.models import ProtectedError, RestrictedError, Sum

from archive.copies.locations import places
from archive.models import IngestConflict, Instance, Patient, Series, Study
from archive.storage import FileSystemStorage, S3Storage, Storage, TieredStorage
from pacs_cloud.metering.models import UsageCounter
from pacs_cloud.models import AuditEvent, Institution, Membership, Transition, User

from ..models import Report, ReportVersion
from .export import archive_path
from .models import ExitJob

CERTIFICATE_FORMAT = "cloud-pacs-certificate-of-deletion/1"
APPS = ("pacs_cloud", "archive", "worklist", "workflow", "viewer", "reports")
# Never deleted here: the audit trail, the usage billed and the exit jobs.
KEPT = (AuditEvent, UsageCounter, ExitJob)
# Rows of these, when they belong to another institution, stop the purge.
CLINICAL = (Patient, Study, Instance, Report)


class PurgeRefused(Exception):
    pass


# Storage -----------------------------------------------------------------------------------


def _parts(storage: Storage) -> list[Storage]:
    if isinstance(storage, TieredStorage):
        return [storage.cache, storage.store]
    return [storage]


def purge_prefix(storage: Storage, prefix: str) -> int:
    """Delete every object whose key starts with ``prefix`` (a folder: ``<uuid>/``); returns how many."""
    removed = 0
    for part in _parts(storage):
        if isinstance(part, FileSystemStorage):
            folder = part.root / prefix
            if folder.is_dir():
                removed += sum(1 for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
        elif isinstance(part, S3Storage):
            paginator = part.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=part.bucket, Prefix=part.prefix + prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    part.client.delete_objects(Bucket=part.bucket, Delete={"Objects": keys, "Quiet": True})
                    removed += len(keys)
    return removed


def keys_under(storage: Storage, prefix: str) -> list[str]:
    """Keys of every object under ``prefix`` in ``storage`` (each part of a tiered one)."""
    found: list[str] = []
    for part in _parts(storage):
        if isinstance(part, FileSystemStorage):
            folder = part.root / prefix
            found += [p.relative_to(part.root).as_posix() for p in folder.rglob("*") if p.is_file()]
        elif isinstance(part, S3Storage):
            paginator = part.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=part.bucket, Prefix=part.prefix + prefix):
                found += [item["Key"] for item in page.get("Contents", [])]
    return found


def purge_storage(institution: Institution) -> dict[str, int]:
    """Every object of the institution at every storage location; objects removed per location."""
    prefix = f"{institution.pk}/"
    conflict_keys = list(IngestConflict.objects.filter(institution=institution).values_list("storage_key", flat=True))
    removed: dict[str, int] = {}
    for place in places(fresh=True):
        count = purge_prefix(place.storage, prefix)
        for key in conflict_keys:
            if place.storage.exists(key):
                place.storage.delete(key)
                count += 1
        removed[place.name] = count
    return removed


def remove_export_files(institution_id: Any) -> int:
    """The download archives of the institution's exports (they hold its data too)."""
    count = 0
    for job in ExitJob.objects.filter(institution_id=institution_id):
        for path in (archive_path(job), archive_path(job).with_suffix(".partial")):
            if path.exists():
                path.unlink()
                count += 1
    return count


# Database ----------------------------------------------------------------------------------


def _institution_fields() -> list[tuple[type[models.Model], str]]:
    """Each model's field naming an institution: a foreign key, or a plain ``institution_id`` column."""
    found = []
    for model in apps.get_models():
        if model._meta.app_label not in APPS or model in KEPT or model is Institution:
            continue
        for f in model._meta.fields:
            if f.is_relation and f.related_model is Institution and model is not Transition:
                found.append((model, f.name))
            elif not f.is_relation and f.name == "institution_id":
                found.append((model, f.name))  # a plain column naming it (no foreign key)
    return found


def _owner(obj: models.Model) -> Any:
    return getattr(obj, "institution_id", None)


def _delete(qs: models.QuerySet, institution: Institution, counts: Counter, depth: int = 0) -> None:
    """Delete ``qs`` and, first, whatever protects its rows (see the module docstring)."""
    if depth > 25:
        raise PurgeRefused(f"deleting {qs.model._meta.label} does not converge")
    for _ in range(50):
        try:
            with transaction.atomic():
                _, per_model = qs.delete()
        except (ProtectedError, RestrictedError) as exc:
            blockers: Any = getattr(exc, "protected_objects", None) or getattr(exc, "restricted_objects", None) or ()
            by_model: dict[type[models.Model], list[Any]] = defaultdict(list)
            for obj in blockers:
                model = type(obj)
                if model in KEPT or model is User or model is Institution:
                    raise PurgeRefused(f"{model._meta.label} {obj.pk} protects the institution's rows") from exc
                if isinstance(obj, CLINICAL) and _owner(obj) != institution.pk:
                    raise PurgeRefused(f"{model._meta.label} {obj.pk} of another institution would go") from exc
                by_model[model].append(obj.pk)
            for model, pks in by_model.items():
                _delete(model._base_manager.filter(pk__in=pks), institution, counts, depth + 1)
            continue
        counts.update({label: n for label, n in per_model.items() if n})
        return
    raise PurgeRefused(f"deleting {qs.model._meta.label} does not converge")


def purge_database(institution: Institution) -> tuple[Counter, dict[str, int]]:
    """Every row of the institution except the audit trail; rows deleted per model, and users."""
    counts: Counter = Counter()
    # Its people: users who belong nowhere else (platform administrators never).
    member_ids = set(Membership.objects.filter(institution=institution).values_list("user_id", flat=True))
    elsewhere = set(
        Membership.objects.filter(user_id__in=member_ids)
        .exclude(institution=institution)
        .values_list("user_id", flat=True)
    )
    leaving = User.objects.filter(pk__in=member_ids - elsewhere, is_platform_admin=False, is_superuser=False)
    people = {"removed": 0, "anonymised": 0}
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Lets signed versions of this institution go, in this transaction only (reports migration 0004).
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL pacs.offboarding = 'on'")
        exit_type = apps.get_model("contenttypes", "ContentType").objects.get_for_model(ExitJob)
        counts["pacs_cloud.Transition"] += (
            Transition.objects.filter(institution=institution).exclude(content_type=exit_type).delete()[0]
        )
        for model, name in _institution_fields():
            value = institution.pk if name == "institution_id" else institution
            _delete(model._base_manager.filter(**{name: value}), institution, counts)
        for user in list(leaving):
            try:
                with transaction.atomic():
                    from ..models import SigningKey

                    SigningKey.objects.filter(user=user).delete()
                    user.delete()
                people["removed"] += 1
            except (ProtectedError, RestrictedError):
                # Signed or claimed something elsewhere: the row stays, the person in it does not.
                user.first_name = user.last_name = user.display_name = user.email = ""
                user.is_active = False
                user.set_unusable_password()
                user.save(update_fields=["first_name", "last_name", "display_name", "email", "is_active", "password"])
                user.api_tokens.all().delete()
                people["anonymised"] += 1
        counts["auth.Group"] += Group.objects.filter(name__startswith=f"{institution.slug}:").delete()[0]
        _delete(Institution.objects.filter(pk=institution.pk), institution, counts)
    return counts, people


# The certificate -----------------------------------------------------------------------------


def inventory(institution: Institution) -> dict[str, int]:
    """What the institution holds, counted before it goes (the certificate's headline figures)."""
    instances = Instance.objects.filter(institution=institution)
    return {
        "patients": Patient.objects.filter(institution=institution).count(),
        "studies": Study.objects.filter(institution=institution).count(),
        "series": Series.objects.filter(study__institution=institution).count(),
        "instances": instances.count(),
        "bytes": instances.aggregate(total=Sum("size"))["total"] or 0,
        "reports": Report.objects.filter(institution=institution).count(),
        "report_versions": ReportVersion.objects.filter(report__institution=institution).count(),
        "members": Membership.objects.filter(institution=institution).values("user").distinct().count(),
    }


def edge_copies(institution: Institution) -> list[dict[str, Any]]:
    """The institution's edge gateways: their local copies are on its own premises, out of the cloud's reach."""
    from archive.models import EdgeGateway

    return [
        {"edge": name, "last_seen_at": seen.isoformat() if seen else None, "online_bytes": online}
        for name, seen, online in EdgeGateway.objects.filter(institution=institution).values_list(
            "name", "last_seen_at", "online_bytes"
        )
    ]


def canonical(certificate: dict[str, Any]) -> bytes:
    return json.dumps(certificate, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_certificate(certificate: dict[str, Any], user: Any) -> tuple[bytes, bytes, Any]:
    """The canonical bytes, their Ed25519 signature and the key (the acting administrator's, reports.signing)."""
    from ..signing import active_key, sign

    body = canonical(certificate)
    key = active_key(user)
    return body, sign(key, body), key


def verify_certificate(job: ExitJob) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if job.certificate is None or job.certificate_signature is None or job.certificate_public_key is None:
        return False
    public = bytes(job.certificate_public_key)
    if hashlib.sha256(public).hexdigest() != job.certificate_key:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(bytes(job.certificate_signature), bytes(job.certificate))
    except (InvalidSignature, ValueError):
        return False
    return True


def certificate_of(job: ExitJob) -> dict[str, Any]:
    return {
        "certificate": json.loads(bytes(job.certificate or b"{}")),
        "signature": base64.b64encode(bytes(job.certificate_signature or b"")).decode(),
        "public_key": base64.b64encode(bytes(job.certificate_public_key or b"")).decode(),
        "key_fingerprint": job.certificate_key,
        "valid": verify_certificate(job),
    }
