"""Object storage behind one small interface, and the object-key layout.

``get_storage()`` returns the backend ``STORAGE_URL`` selects:

* ``file:///path`` — :class:`FileSystemStorage`, the archive on a local or
  mounted file system. Objects are durable when ``put_*`` returns.
* ``s3://bucket[/prefix]`` — :class:`TieredStorage`: objects are received
  durably into a local cache (:class:`FileSystemStorage` under
  ``STORAGE_CACHE_DIR``) and copied to the object store
  (:class:`S3Storage`) by background workers (``archive.tasks``); the index
  records where each object lives (``Instance.location``), so an object is
  never only in a queue. Writing every instance synchronously to S3 is many
  times slower than to local disk.

Keys are built only by :func:`object_key` from validated UIDs, so no
caller-supplied text ever reaches a path or an S3 key.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
import threading
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

from django.conf import settings

from pacs_cloud.lib.uids import require_uid

CHUNK = 1024 * 1024
_VERSION = re.compile(r"[0-9a-f]{8,64}")

# Where an object lives (Instance.location).
CACHE = "cache"
STORED = "stored"


def object_key(institution_id: object, study_uid: str, series_uid: str, sop_uid: str, version: str = "") -> str:
    """``<institution uuid>/<study uid>/<series uid>/<sop uid>[.<version>].dcm``.

    UIDs are validated (:func:`pacs_cloud.lib.uids.require_uid`); ``version``
    is a lowercase hex digest prefix. Ingest versions every key with the
    object's content digest, so two different objects claiming one SOP
    Instance UID can never overwrite each other, even when sent at once.
    """
    if version and not _VERSION.fullmatch(version):
        raise ValueError(f"object version {version!r} is not a hex digest")
    institution = str(institution_id)
    if not re.fullmatch(r"[0-9a-fA-F-]{1,36}", institution):
        raise ValueError(f"institution id {institution!r} is not a UUID")
    name = require_uid(sop_uid, "SOP Instance UID") + (f".{version}" if version else "") + ".dcm"
    return "/".join(
        (
            institution,
            require_uid(study_uid, "Study Instance UID"),
            require_uid(series_uid, "Series Instance UID"),
            name,
        )
    )


class Storage(Protocol):
    """The interface every backend offers; ``put_*`` return the location (``cache`` or ``stored``)."""

    def put_file(self, key: str, source: Path, sha256: str) -> str:
        """Store ``source`` under ``key``; durable when it returns."""

    def put_chunks(self, key: str, chunks: Iterable[bytes], sha256: str) -> str:
        """Store the concatenated ``chunks`` under ``key``; durable when it returns."""

    def open(self, key: str) -> BinaryIO: ...

    def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """A local file holding the object, when there is one (for zero-copy sends)."""


# What a store says of an object in a class that needs a restore before a read.
RESTORE_NEEDED = "needed"
RESTORE_ONGOING = "ongoing"
RESTORE_READY = "ready"  # readable now (restored, or never archived)


class FileSystemStorage:
    """Objects as files under a root folder: temporary file, fsync, rename, fsync the folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_text = str(self.root.resolve())
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._staging = self.root / ".incoming"
        self._counter = itertools.count()

    def path(self, key: str) -> Path:
        # Keys are made of validated UIDs; normalising (no file system calls,
        # unlike resolve()) is enough to refuse one that would leave the root.
        path = os.path.normpath(os.path.join(self._root_text, key))
        if not path.startswith(self._root_text + os.sep):
            raise ValueError(f"object key {key!r} leaves the storage root")
        return Path(path)

    def _ensure_dir(self, folder: Path) -> None:
        """Create ``folder`` durably: every new directory entry is fsynced in its parent."""
        if folder in self._known_dirs:
            return
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for created in reversed(missing):
            try:
                created.mkdir()
            except FileExistsError:
                pass
            _fsync_dir(created.parent)
        with self._lock:
            self._known_dirs.add(folder)

    def put_chunks(self, key: str, chunks: Iterable[bytes], sha256: str) -> str:
        return self.commit(self.stage(chunks), key)

    def stage(self, chunks: Iterable[bytes]) -> Path:
        """Write an object into a staging file (not durable yet); :meth:`commit` puts it under its key.

        Staging may start before the key is known (while the data set is
        still being parsed); the staging folder is on the same file system,
        so the commit is a rename.
        """
        folder = self._staging
        if folder not in self._known_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._known_dirs.add(folder)
        tmp = folder / f"{os.getpid()}-{threading.get_ident()}-{next(self._counter)}.tmp"
        try:
            with open(tmp, "wb") as dst:
                for chunk in chunks:
                    dst.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def commit(self, staged: Path, key: str) -> str:
        """Put a staged object under ``key``, durably (file and folder fsynced) when it returns.

        A key names its content (object_key's version), so an existing file
        there is an earlier copy of the same object, perhaps already
        referenced: it is replaced only by a copy that is durable first. A
        new key is renamed into place before the fsyncs: the file's fsync then
        commits the journal with the rename in it and the folder's is nearly
        free. Nothing refers to a new key until both have returned (the index
        is written after), so a crash in between leaves at worst an
        unreferenced file that a re-send replaces.
        """
        target = self.path(key)
        self._ensure_dir(target.parent)
        try:
            with open(staged, "rb+") as handle:
                if target.exists():
                    os.fsync(handle.fileno())
                    os.replace(staged, target)
                else:
                    os.replace(staged, target)
                    os.fsync(handle.fileno())
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return STORED

    def put_file(self, key: str, source: Path, sha256: str) -> str:
        with open(source, "rb") as src:
            return self.put_chunks(key, iter(lambda: src.read(CHUNK), b""), sha256)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with open(self.path(key), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.exists() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChecksumMismatch(OSError):
    """The object store holds other bytes than were sent."""


def _s3_client(endpoint_url: str, *, attempts: int, connect_timeout: float = 60) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID or None,
        aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY or None,
        region_name=settings.AWS_DEFAULT_REGION,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            max_pool_connections=max(10, settings.STORAGE_COPY_WORKERS * 2),
            # Our own Content-MD5 and SHA-256 instead of the CRC trailers
            # newer SDKs add, which several S3 servers do not accept.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


# S3 storage classes whose objects are read only after a restore.
ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


class S3Storage:
    """Objects in an S3 bucket (Ceph RGW, MinIO, AWS S3).

    Each upload carries Content-MD5 (per part for multipart uploads), which
    the server checks, and the SHA-256 as object metadata; after the upload
    the object's ETag and metadata are read back and compared. (Not every S3
    server checks ``x-amz-checksum-*``, Ceph's among them, so we keep our own.)
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str = "",
        create_bucket: bool = True,
        storage_class: str = "",
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = settings.S3_MULTIPART_BYTES
        self.storage_class = storage_class
        self.client = _s3_client(endpoint_url, attempts=5)
        # Reads fail over to another copy (archive.copies): a store that does
        # not answer is given up on after one retry instead of five.
        self.read_client = _s3_client(endpoint_url, attempts=2, connect_timeout=2)
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put_file(self, key: str, source: Path, sha256: str) -> str:
        size = source.stat().st_size
        with open(source, "rb") as handle:
            if size <= self.part_size:
                self._put_single(key, handle.read(), sha256)
            else:
                self._put_multipart(key, handle, sha256)
        return STORED

    def put_chunks(self, key: str, chunks: Iterable[bytes], sha256: str) -> str:
        self._put_single(key, b"".join(chunks), sha256)
        return STORED

    def _put_single(self, key: str, body: bytes, sha256: str) -> None:
        md5 = hashlib.md5(body, usedforsecurity=False)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=body,
            ContentMD5=base64.b64encode(md5.digest()).decode(),
            ContentType="application/dicom",
            Metadata={"sha256": sha256},
            **self._class_argument(),
        )
        self._verify(key, f'"{md5.hexdigest()}"', sha256, len(body))

    def _class_argument(self) -> dict[str, str]:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _put_multipart(self, key: str, handle: IO[bytes], sha256: str) -> None:
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=self._key(key),
            ContentType="application/dicom",
            Metadata={"sha256": sha256},
            **self._class_argument(),
        )
        upload_id = upload["UploadId"]
        parts, digests, size = [], [], 0
        try:
            number = 1
            while part := handle.read(self.part_size):
                md5 = hashlib.md5(part, usedforsecurity=False)
                answer = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                    ContentMD5=base64.b64encode(md5.digest()).decode(),
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                digests.append(md5.digest())
                size += len(part)
                number += 1
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
            raise
        # The ETag of a multipart object is the MD5 of the parts' MD5s and the part count.
        combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        self._verify(key, f'"{combined}-{len(parts)}"', sha256, size)

    def _verify(self, key: str, etag: str, sha256: str, size: int) -> None:
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        stored_sha = head.get("Metadata", {}).get("sha256", "")
        if head.get("ETag") != etag or stored_sha != sha256 or head.get("ContentLength") != size:
            raise ChecksumMismatch(
                f"object {key} in the store does not match what was sent "
                f"(etag {head.get('ETag')} != {etag} or sha256 {stored_sha} != {sha256})"
            )

    def open(self, key: str) -> BinaryIO:
        return cast(BinaryIO, _S3Reader(self.read_client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]))

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        answer = self.read_client.get_object(
            Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{offset + length - 1}"
        )
        return answer["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def local_path(self, key: str) -> Path | None:
        return None

    def restore_state(self, key: str) -> str:
        """Whether ``key`` can be read now, or needs (or is under) a restore from an archive storage class."""
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        restore = head.get("Restore") or ""
        if 'ongoing-request="false"' in restore:
            return RESTORE_READY
        if 'ongoing-request="true"' in restore:
            return RESTORE_ONGOING
        if head.get("StorageClass") in ARCHIVE_STORAGE_CLASSES:
            return RESTORE_NEEDED
        return RESTORE_READY

    def request_restore(self, key: str, *, days: int, tier: str = "Standard") -> None:
        """Ask the store to make an archived object readable for ``days`` (S3 RestoreObject); safe to repeat."""
        from botocore.exceptions import ClientError

        try:
            self.client.restore_object(
                Bucket=self.bucket,
                Key=self._key(key),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "RestoreAlreadyInProgress":
                raise

    def stored_fixity(self, key: str) -> tuple[str, int]:
        """The SHA-256 recorded with the object and its size, without reading it (archive classes allow no read)."""
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return head.get("Metadata", {}).get("sha256", ""), int(head.get("ContentLength") or 0)

    def sha256_of(self, key: str) -> str:
        """Recompute the SHA-256 of a stored object by reading it back (fixity)."""
        digest = hashlib.sha256()
        with self.open(key) as body:
            for block in iter(lambda: body.read(CHUNK), b""):
                digest.update(block)
        return digest.hexdigest()


class _S3Reader:
    """A botocore streaming body as a closable, iterable binary file."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        return self._body.read(None if size is None or size < 0 else size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(CHUNK), b"")

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _S3Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TieredStorage:
    """A durable local cache in front of an object store.

    ``put_*`` write to the cache and answer ``cache``; :meth:`copy_to_store`
    (run by background workers) copies an object up and verifies it;
    :meth:`evict` drops the cached copy of an object already in the store.
    Reads prefer the cache.
    """

    def __init__(self, cache: FileSystemStorage, store: S3Storage) -> None:
        self.cache = cache
        self.store = store

    def put_file(self, key: str, source: Path, sha256: str) -> str:
        self.cache.put_file(key, source, sha256)
        return CACHE

    def put_chunks(self, key: str, chunks: Iterable[bytes], sha256: str) -> str:
        self.cache.put_chunks(key, chunks, sha256)
        return CACHE

    def stage(self, chunks: Iterable[bytes]) -> Path:
        return self.cache.stage(chunks)

    def commit(self, staged: Path, key: str) -> str:
        self.cache.commit(staged, key)
        return CACHE

    def copy_to_store(self, key: str, sha256: str) -> None:
        path = self.cache.local_path(key)
        if path is None:
            if self.store.exists(key):
                return  # copied before; the cached copy was evicted already
            raise FileNotFoundError(f"object {key} is neither cached nor stored")
        self.store.put_file(key, path, sha256)

    def evict(self, key: str) -> None:
        self.cache.delete(key)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.cache.open(key)
        except FileNotFoundError:
            return self.store.open(key)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            return self.cache.read_range(key, offset, length)
        except FileNotFoundError:
            return self.store.read_range(key, offset, length)

    def exists(self, key: str) -> bool:
        return self.cache.exists(key) or self.store.exists(key)

    def delete(self, key: str) -> None:
        self.cache.delete(key)
        self.store.delete(key)

    def local_path(self, key: str) -> Path | None:
        return self.cache.local_path(key)


@cache
def storage_for(url: str) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileSystemStorage(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("an s3:// STORAGE_URL needs a bucket: s3://bucket[/prefix]")
        store = S3Storage(parsed.netloc, parsed.path, endpoint_url=settings.S3_ENDPOINT_URL)
        return TieredStorage(FileSystemStorage(Path(settings.STORAGE_CACHE_DIR)), store)
    raise ValueError(f"unsupported STORAGE_URL scheme: {parsed.scheme!r}")


def get_storage() -> Storage:
    return storage_for(settings.STORAGE_URL)


def health_probe() -> dict:
    """A round trip through the archive tier for ``/healthz``: write, read back and delete a small object."""
    import uuid as _uuid

    storage = get_storage()
    tier = storage.store if isinstance(storage, TieredStorage) else storage
    key = f"health/{_uuid.uuid4().hex}.probe"
    body = b"cloud-pacs health probe"
    digest = hashlib.sha256(body).hexdigest()
    tier.put_chunks(key, [body], digest)
    try:
        if tier.read_range(key, 0, len(body)) != body:
            raise OSError("the storage answered other bytes than were written")
    finally:
        tier.delete(key)
    return {"url": settings.STORAGE_URL.split("?")[0], "backend": type(storage).__name__}
