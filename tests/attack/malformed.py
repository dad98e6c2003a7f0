"""Sending the malformed corpus to a running product and reading back what it stored.

Shared by the suite (``tests/attack/test_malformed_*.py``) and the longer run
(``bench/attack.py``): the same senders, the same checks. Each sender returns
an :class:`Outcome` per case; :func:`problems` lists what broke the rules:

* no server error (HTTP 5xx, DIMSE 0xC211 or any unexpected status) and no
  broken connection;
* a case expected ``stored`` is stored, one expected ``refused`` is refused;
* every refusal carries a reason;
* every stored object reads back cleanly (metadata, frame 1, rendered,
  thumbnail, the default transcoding retrieval): an answer that is complete,
  or a clean 4xx with a reason, never a 5xx or a body cut short.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import requests

from tests.attack.corpus import REFUSED, STORED, Case

# STOW-RS Failed SOP Sequence item: Failure Reason, Error Comment (PS3.18 10.5.3).
FAILURE_REASON, ERROR_COMMENT = "00081197", "00000902"


@dataclass
class Outcome:
    case: Case
    via: str
    stored: bool = False
    reason: str = ""  # the refusal's reason
    status: int = 0  # HTTP status or DIMSE status
    error: str = ""  # what broke (a server error, a broken stream ...)
    url: str = ""  # a stored object's WADO-RS URL (STOW-RS answers it)
    reads: dict[str, int] = field(default_factory=dict)


def problems(outcomes: Iterable[Outcome]) -> list[str]:
    found = []
    for outcome in outcomes:
        case = outcome.case
        where = f"{outcome.via} {case.id}"
        if outcome.error:
            found.append(f"{where}: {outcome.error}")
            continue
        if case.expect == STORED and not outcome.stored:
            found.append(f"{where}: a valid object was refused: {outcome.reason}")
        if case.expect == REFUSED and outcome.stored:
            found.append(f"{where}: a malformed object was stored")
        if not outcome.stored and not outcome.reason.strip():
            found.append(f"{where}: refused without a reason (status {outcome.status:#x})")
    return found


# STOW-RS -------------------------------------------------------------------------------


def multipart(parts: list[bytes], boundary: str = "attack-boundary") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(
    base: str, headers: dict[str, str], cases: list[Case], session: requests.Session | None = None
) -> list[Outcome]:
    """One STOW-RS request carrying ``cases``; an outcome per case, matched by SOP Instance UID.

    A refusal that names no SOP instance (an unreadable part) is matched to
    the remaining cases in order, as the answer lists failures in the order of the parts.
    """
    http = session or requests
    body, content_type = multipart([case.data for case in cases])
    outcomes = [Outcome(case, "stow") for case in cases]
    try:
        response = http.post(
            f"{base}/dicomweb/studies", data=body, headers={**headers, "Content-Type": content_type}, timeout=120
        )
    except requests.RequestException as exc:
        for outcome in outcomes:
            outcome.error = f"the request failed: {exc}"
        return outcomes
    for outcome in outcomes:
        outcome.status = response.status_code
    if response.status_code >= 500 or response.status_code not in (200, 202, 409):
        for outcome in outcomes:
            outcome.error = f"STOW answered {response.status_code}: {response.text[:200]}"
        return outcomes
    answer = response.json()
    stored = {
        item["00081155"]["Value"][0]: (item.get("00081190", {}).get("Value") or [""])[0]
        for item in answer.get("00081199", {}).get("Value", [])
    }
    failed = answer.get("00081198", {}).get("Value", [])
    by_uid = {o.case.sop_instance_uid: o for o in outcomes}
    unmatched = []
    for item in failed:
        uid = (item.get("00081155", {}).get("Value") or [""])[0]
        reason = (item.get(ERROR_COMMENT, {}).get("Value") or [""])[0]
        code = (item.get(FAILURE_REASON, {}).get("Value") or [0])[0]
        owner = by_uid.get(uid)
        if owner is not None and not owner.reason:
            owner.reason, owner.status = reason or f"failure reason {code:#x} without a comment", code
        else:
            unmatched.append(reason or f"failure reason {code:#x} without a comment")
    for outcome in outcomes:
        if outcome.case.sop_instance_uid in stored:
            outcome.stored, outcome.url = True, stored[outcome.case.sop_instance_uid]
    pending = [o for o in outcomes if not o.stored and not o.reason]
    for outcome, reason in zip(pending, unmatched, strict=False):
        outcome.reason = reason
    return outcomes


# C-STORE -------------------------------------------------------------------------------


def c_store(port: int, called: str, calling: str, cases: list[Case]) -> list[Outcome]:
    """C-STOREs of each case's data set bytes exactly as they are, over one association per batch."""
    import tempfile
    from pathlib import Path

    from pynetdicom import AE, _config

    outcomes = []
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    contexts = sorted({(c.sop_class_uid, c.transfer_syntax) for c in cases})
    for sop_class, syntax in contexts[:128]:
        ae.add_requested_context(sop_class, syntax)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are, without decoding them
    assoc = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            for case in cases:
                outcome = Outcome(case, f"c-store {called}")
                outcomes.append(outcome)
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate("127.0.0.1", port, ae_title=called)
                    if not assoc.is_established:
                        outcome.error = "the association was not accepted"
                        continue
                path = Path(folder) / f"{case.id}.dcm"
                try:
                    path.write_bytes(_sendable(case))
                except (UnicodeEncodeError, TypeError):  # a request UID DICOM cannot even encode: nothing to send
                    outcome.reason, outcome.status = "not sendable: a non-ASCII UID in the request", -1
                    continue
                try:
                    status = assoc.send_c_store(path)
                except Exception as exc:  # the sender could not encode it: nothing reached the server
                    outcome.reason, outcome.status = f"not sendable: {type(exc).__name__}", -1
                    continue
                if not status or "Status" not in status:
                    outcome.error = "no answer (the association was aborted)"
                    assoc = None
                    continue
                outcome.status = int(status.Status)
                comment = str(status.get("ErrorComment", "") or "")
                if outcome.status in (0x0000, 0xB000, 0xB006, 0xB007):
                    outcome.stored = True
                elif outcome.status == 0xC211 or outcome.status == 0x0110:
                    outcome.error = f"answered {outcome.status:#06x} (an unhandled failure): {comment}"
                else:
                    outcome.reason = comment
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc is not None and assoc.is_established:
            assoc.release()
    return outcomes


def _sendable(case: Case) -> bytes:
    """The case as a Part 10 file pynetdicom can take apart: its data set behind clean File Meta.

    A C-STORE carries no File Meta; the SOP class, instance and transfer
    syntax travel in the request and the presentation context instead.
    """
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = case.sop_class_uid
    meta.MediaStorageSOPInstanceUID = case.affected_sop_instance_uid
    meta.TransferSyntaxUID = case.transfer_syntax
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    # (A non-ASCII UID raises here: pydicom's error wrapper makes it a TypeError.)
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + case.dataset


# Reading back --------------------------------------------------------------------------

READS = {
    "metadata": ("/metadata", "application/dicom+json"),
    "frame": ("/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
    "rendered": ("/rendered", "image/jpeg"),
    "thumbnail": ("/thumbnail", "image/jpeg"),
    "retrieve": ("", 'multipart/related; type="application/dicom"'),
}


def read_back(base: str, headers: dict[str, str], outcome: Outcome, session: requests.Session | None = None) -> None:
    """Read a stored object every way a viewer does; a 5xx, a bad answer or a cut stream is an error."""
    from urllib.parse import urlsplit

    http = session or requests
    url = base + urlsplit(outcome.url).path
    for name, (suffix, accept) in READS.items():
        try:
            response = http.get(url + suffix, headers={**headers, "Accept": accept}, timeout=120)
            body = response.content  # the whole stream: a producer failing halfway raises here
        except requests.RequestException as exc:
            outcome.error = f"{name} broke off: {type(exc).__name__}: {exc}"
            return
        outcome.reads[name] = response.status_code
        if response.status_code >= 500:
            outcome.error = f"{name} answered {response.status_code}"
            return
        if response.status_code >= 400:
            if not _has_reason(response):
                outcome.error = f"{name} answered {response.status_code} without a reason"
                return
            continue
        if response.status_code != 200 or not body:
            outcome.error = f"{name} answered {response.status_code} with {len(body)} bytes"
            return
        if name == "metadata":
            json.loads(body)
        elif name in ("frame", "retrieve"):
            boundary = response.headers.get("Content-Type", "").split("boundary=")[-1].strip('"')
            if not boundary or not body.rstrip().endswith(f"--{boundary}--".encode()):
                outcome.error = f"{name}: the multipart body is not closed ({len(body)} bytes)"
                return


def _has_reason(response: requests.Response) -> bool:
    try:
        answer = response.json()
    except ValueError:
        return bool(response.text.strip())
    return bool(answer) and any(str(v).strip() for v in (answer.values() if isinstance(answer, dict) else answer))
