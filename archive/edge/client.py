"""The edge's HTTP client of the cloud: STOW-RS, WADO-RS and the edge endpoints, with the edge's token.

Everything the edge and the cloud say to each other goes over HTTP(S) with
``Authorization: Bearer <EDGE_TOKEN>``. :class:`CloudUnavailable` means "try
again later" (no answer, a 5xx, a 429, a token the cloud does not take right
now); any other answer is the cloud's word.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from archive.multipart import MultipartError, PartReader, parse_media_type

TIMEOUT = (5, 120)  # connect, read (seconds)


class CloudUnavailable(Exception):
    """The cloud did not answer, or answered that it cannot take the request now.

    ``status`` is the HTTP status when there was an answer (None: no answer).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CloudRefused(Exception):
    """The cloud refused a whole request (a 4xx that is not about the token or the load)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class MultipartBody(io.RawIOBase):
    """A multipart/related body read from files part by part, its length known in advance.

    ``requests`` sends a sized file-like body with a Content-Length and reads
    it in blocks: a batch of instances never sits in memory whole.
    """

    def __init__(self, paths: list[Path], boundary: str) -> None:
        self._pieces: list[bytes | Path] = []
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for path in paths:
            self._pieces += [head, path, b"\r\n"]
        self._pieces.append(f"--{boundary}--\r\n".encode())
        self._length = sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p in self._pieces)
        self._current: Any = None
        self._index = 0
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        # requests sizes a body as len() - tell(): without this it would send it chunked.
        return self._position

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._index < len(self._pieces):
            if self._current is None:
                piece = self._pieces[self._index]
                self._current = io.BytesIO(piece) if isinstance(piece, bytes) else open(piece, "rb")  # noqa: SIM115
            count = self._current.readinto(buffer)
            if count:
                self._position += count
                return count
            self._current.close()
            self._current = None
            self._index += 1
        return 0

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


class Cloud:
    """The cloud as the edge sees it (one HTTP session per thread)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise CloudUnavailable(f"no answer from the cloud: {exc.__class__.__name__}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403, 408, 429):
            raise CloudUnavailable(
                f"the cloud answered {response.status_code}: {response.text[:200]}", response.status_code
            )
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request; raises :class:`CloudUnavailable` when there is no usable answer."""
        return self._send(method, path, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise CloudUnavailable(f"the cloud answered {response.status_code}: {response.text[:200]}")
        return response.json()

    # STOW-RS (PS3.18 §10.5) ---------------------------------------------------------------

    def stow(self, paths: list[Path]) -> tuple[int, dict[str, Any]]:
        """Store Part 10 files in one request; returns the HTTP status and the DICOM JSON answer."""
        boundary = uuid.uuid4().hex
        body = MultipartBody(paths, boundary)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Content-Length": str(len(body)),
        }
        try:
            response = self._send("POST", "/dicomweb/studies", data=body, headers=headers)
        finally:
            body.close()
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        if response.status_code in (200, 202, 409) and isinstance(answer, dict):
            return response.status_code, answer
        if response.status_code in (400, 413):
            # Not a per-instance answer: the body as a whole was refused (unreadable, too large).
            # Other answers (a 404 from a wrong CLOUD_URL, a proxy's page) are retried, never
            # taken as the cloud's word on the images.
            raise CloudRefused(response.status_code, response.text)
        raise CloudUnavailable(f"STOW-RS answered {response.status_code}: {response.text[:200]}")

    # WADO-RS (PS3.18 §10.4) ---------------------------------------------------------------

    def retrieve_study(self, study_uid: str, folder: Path) -> Iterator[tuple[bytes | None, Path | None]]:
        """Every instance of a study as Part 10 bytes as stored (transfer syntax unchanged), streamed.

        Yields (bytes, None) for a part held in memory, (None, path) for a large
        one spilled to ``folder`` (the caller removes the file).
        """
        headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        response = self._send("GET", f"/dicomweb/studies/{study_uid}", headers=headers, stream=True)
        if response.status_code != 200:
            raise CloudUnavailable(f"WADO-RS answered {response.status_code}")
        _, params = parse_media_type(response.headers.get("Content-Type", ""))
        response.raw.decode_content = True
        try:
            for part in PartReader(response.raw, params.get("boundary", "").strip('"'), folder):
                if part.error:
                    raise CloudUnavailable(f"WADO-RS answer cut short: {part.error}")
                yield part.data, (Path(part.path) if part.path else None)
        except (requests.RequestException, MultipartError, OSError) as exc:
            raise CloudUnavailable(f"WADO-RS answer unreadable: {exc}") from exc
        finally:
            response.close()

    # The edge endpoints ---------------------------------------------------------------------

    def confirm(self, uids: list[str]) -> dict[str, str]:
        return self._json("POST", "/api/v1/edge/confirm/", json={"sop_instance_uids": uids})["confirmed"]

    def heartbeat(self, report: dict[str, Any]) -> None:
        self._json("POST", "/api/v1/edge/heartbeat/", json=report)

    def report_quarantine(self, items: list[dict[str, Any]]) -> None:
        self._json("POST", "/api/v1/edge/quarantine/", json={"items": items})

    def config(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/edge/config/")

    def get_json(self, path: str, **params: str) -> Any:
        return self._json("GET", path, params=params)
