"""Object storage behind one small interface, and the object-key layout.

``get_storage()`` returns the backend ``STORAGE_URL`` selects. Keys are built
only by :func:`object_key` from validated UIDs, so no caller-supplied text ever
reaches a path or an S3 key.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from django.conf import settings

from pacs_cloud.lib.uids import require_uid


def object_key(institution_id: object, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """``<institution uuid>/<study uid>/<series uid>/<sop uid>.dcm``; UIDs are validated."""
    return "/".join(
        (
            str(institution_id),
            require_uid(study_uid, "Study Instance UID"),
            require_uid(series_uid, "Series Instance UID"),
            require_uid(sop_uid, "SOP Instance UID") + ".dcm",
        )
    )


class Storage(Protocol):
    def put_file(self, key: str, source: Path, sha256: str) -> None:
        """Store ``source`` under ``key``; durable when it returns."""

    def open(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


class FileSystemStorage:
    """Objects as files under a root folder: temporary file, fsync, rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"object key {key!r} leaves the storage root")
        return path

    def put_file(self, key: str, source: Path, sha256: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def storage_for(url: str) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileSystemStorage(Path(parsed.path))
    raise ValueError(f"unsupported STORAGE_URL scheme: {parsed.scheme!r}")


def get_storage() -> Storage:
    return storage_for(settings.STORAGE_URL)
