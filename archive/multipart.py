"""multipart/related bodies (RFC 2387) as DICOMweb uses them (PS3.18 §8.6.1.2).

:class:`PartReader` splits a request body into parts on disk without
holding it in memory; :func:`part_header` and :func:`closing` frame parts of
a streamed response.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO

READ_SIZE = 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
# Parts up to this size stay in memory; larger ones go to a temporary file.
MEMORY_PART_BYTES = 32 * 1024 * 1024


class _Body:
    """A part's body: in memory while small, spilled to a temporary file past MEMORY_PART_BYTES."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.chunks: list[bytes] = []
        self.size = 0
        self.handle: Any = None
        self.path: Path | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.handle is None and self.size > MEMORY_PART_BYTES:
            self.handle = tempfile.NamedTemporaryFile(dir=self.folder, prefix="part-", suffix=".dcm", delete=False)
            self.path = Path(self.handle.name)
            for chunk in self.chunks:
                self.handle.write(chunk)
            self.chunks = []
        if self.handle is not None:
            self.handle.write(data)
        else:
            self.chunks.append(data)

    def close(self) -> bytes | None:
        """The body in memory, or None when it is in :attr:`path`."""
        if self.handle is not None:
            self.handle.close()
            return None
        return b"".join(self.chunks)


class MultipartError(ValueError):
    """A body that cannot be split into parts at all."""


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` as ``("type/subtype", {"a": "b", "c": "d"})`` (lower-cased names)."""
    message = Message()
    message["content-type"] = value
    params = {k.lower(): v for k, v in message.get_params(header="content-type", failobj=[])[1:]}
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type, params


def new_boundary() -> str:
    return "cloudpacs-" + secrets.token_hex(16)


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines.extend(f"{k}: {v}" for k, v in (extra or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


@dataclass
class Part:
    headers: dict[str, str]
    path: Path | None = None  # the body on disk, for a large part ...
    size: int = 0
    error: str = ""  # why the part is unusable
    data: bytes | None = None  # ... or in memory, for one up to MEMORY_PART_BYTES

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class PartReader:
    """Iterate over the parts of a multipart body read from ``stream``.

    Each part's body is kept in memory, or in a temporary file in ``folder``
    when large; the caller deletes that file (:attr:`Part.path`). A body that ends before its
    closing delimiter yields its last part with ``error`` set, after every
    complete part before it.
    """

    def __init__(self, stream: BinaryIO, boundary: str, folder: Path) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("the multipart body has no usable boundary")
        self.stream = stream
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _read(self) -> bytes:
        return self.stream.read(READ_SIZE) or b""

    def __iter__(self):  # type: ignore[no-untyped-def]
        buffer = b"\r\n"  # lets the first delimiter match like the others
        # Skip the preamble up to the first delimiter.
        while True:
            index = buffer.find(self.delimiter)
            if index >= 0:
                buffer = buffer[index + len(self.delimiter) :]
                break
            chunk = self._read()
            if not chunk:
                raise MultipartError("the multipart body holds no part (boundary not found)")
            buffer = buffer[-len(self.delimiter) :] + chunk
        while True:
            # After a delimiter: "--" closes the body, CRLF starts a part.
            while len(buffer) < 2:
                chunk = self._read()
                if not chunk:
                    return
                buffer += chunk
            if buffer.startswith(b"--"):
                return
            # Part headers, up to an empty line.
            while b"\r\n\r\n" not in buffer:
                chunk = self._read()
                if not chunk or len(buffer) > MAX_HEADER_BYTES:
                    yield Part(headers={}, error="the multipart body ends inside a part's headers")
                    return
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            headers = _headers(head)
            body = _Body(self.folder)
            complete = False
            while True:
                index = buffer.find(self.delimiter)
                if index >= 0:
                    body.write(buffer[:index])
                    buffer = buffer[index + len(self.delimiter) :]
                    complete = True
                    break
                keep = len(self.delimiter) - 1
                if len(buffer) > keep:
                    body.write(buffer[:-keep])
                    buffer = buffer[-keep:]
                chunk = self._read()
                if not chunk:
                    body.write(buffer)
                    break
                buffer += chunk
            data = body.close()
            if not complete:
                yield Part(
                    headers, body.path, body.size, "the multipart body ends before this part's closing boundary", data
                )
                return
            yield Part(headers, body.path, body.size, data=data)


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


# Accept headers --------------------------------------------------------------------

_SPLIT = re.compile(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")


@dataclass(frozen=True)
class Acceptable:
    media_type: str  # e.g. multipart/related or application/dicom+json
    part_type: str  # the multipart "type" parameter, or "" for single-part types
    transfer_syntax: str  # "" (not given), "*" or a UID
    quality: float


def parse_accept(header: str) -> list[Acceptable]:
    """An Accept header as acceptable media types, best first (RFC 9110 §12.5.1)."""
    result = []
    for position, item in enumerate(_SPLIT.split(header or "")):
        if not item.strip():
            continue
        media_type, params = parse_media_type(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        result.append(
            (
                -quality,
                position,
                Acceptable(
                    media_type,
                    params.get("type", "").strip('"').lower(),
                    params.get("transfer-syntax", "").strip('"'),
                    quality,
                ),
            )
        )
    return [item for _, _, item in sorted(result, key=lambda r: (r[0], r[1]))]
