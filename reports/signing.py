"""Ed25519 signing of reports: per-radiologist keys, the canonical form, verification.

Each radiologist has one active :class:`~reports.models.SigningKey`; its
private half is stored encrypted with AES-256-GCM under the deployment's key
encryption key (``REPORTS_KEY_ENCRYPTION_KEY``, else derived from
``SECRET_KEY`` with HKDF), with the user and key ids as associated data, so a
key row copied to another user does not decrypt.

The canonical form is UTF-8 JSON with sorted keys and no insignificant white
space, of: the report and version ids, the kind, the institution, the study
(UID, accession number, patient id), every section's text, the key images
(study/series/SOP instance UIDs, frame, the archived object's SHA-256), the
signer (username, name, key fingerprint), the signing time and the SHA-256 of
the previous version's form (a chain). Verifying rebuilds that form from the
stored fields and checks it byte for byte against what was signed, then the
signature against the signer's public key: a changed byte anywhere fails.

A signature needs the signer's password again, checked with the product's
Argon2 hasher. A correct password opens a *signing window*
(``REPORTS_SIGN_WINDOW_SECONDS``) in which the same signer signs without it:
in the browser the window belongs to the session (signing out flushes it), for
a bearer-token client to the token. It is bound to the user and to an HMAC of
their password hash, so it never serves another user and ends when the
password changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from pacs_cloud.models import ApiToken, User

from .models import SigningKey

FORMAT = "cloud-pacs-report/1"
_RAW = serialization.Encoding.Raw


def _kek() -> bytes:
    configured = getattr(settings, "REPORTS_KEY_ENCRYPTION_KEY", "")
    if configured:
        key = base64.b64decode(configured)
        if len(key) != 32:
            raise ValueError("REPORTS_KEY_ENCRYPTION_KEY must be 32 bytes, base64-encoded")
        return key
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cloud-pacs report signing keys").derive(
        settings.SECRET_KEY.encode()
    )


def _aad(user_id: object, key_id: object) -> bytes:
    return f"{user_id}|{key_id}".encode()


def create_key(user: Any) -> SigningKey:
    """A new active key for ``user``, retiring any previous one."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    raw = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    row = SigningKey(user=user, public_key=public, fingerprint=hashlib.sha256(public).hexdigest())
    nonce = os.urandom(12)
    row.encrypted_private_key = nonce + AESGCM(_kek()).encrypt(nonce, raw, _aad(user.pk, row.pk))
    with transaction.atomic():
        SigningKey.objects.filter(user=user, is_active=True).update(is_active=False, retired_at=timezone.now())
        row.save(force_insert=True)
    return row


def active_key(user: Any) -> SigningKey:
    """The user's active key, made on first use."""
    row = SigningKey.objects.filter(user=user, is_active=True).first()
    return row if row is not None else create_key(user)


def private_key(row: SigningKey) -> Ed25519PrivateKey:
    blob = bytes(row.encrypted_private_key)
    try:
        raw = AESGCM(_kek()).decrypt(blob[:12], blob[12:], _aad(row.user_id, row.pk))
    except InvalidTag:
        raise SigningError("the signing key cannot be decrypted with this deployment's key") from None
    return Ed25519PrivateKey.from_private_bytes(raw)


class SigningError(Exception):
    pass


def canonical_form(
    *,
    report_id: object,
    version_id: object,
    number: int,
    kind: str,
    institution_id: object,
    study: dict[str, str],
    content: dict[str, Any],
    key_images: list[dict[str, Any]],
    signer: dict[str, str],
    signed_at: datetime,
    previous_sha256: str,
) -> bytes:
    body = {
        "format": FORMAT,
        "report": str(report_id),
        "version": str(version_id),
        "number": number,
        "kind": kind,
        "institution": str(institution_id),
        "study": study,
        "content": {k: str(v) for k, v in sorted(content.items()) if k != "key_images"},
        "key_images": key_images,
        "signer": signer,
        "signed_at": signed_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "previous": previous_sha256,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(row: SigningKey, data: bytes) -> bytes:
    return private_key(row).sign(data)


def verification_code(signature: bytes) -> str:
    """A short code printed on the PDF: looks up the version and proves which signature it carries."""
    digest = hashlib.sha256(signature).digest()
    text = base64.b32encode(digest).decode()[:16]
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def form_of(version: Any) -> bytes:
    """Rebuild the canonical form of a stored version from its fields."""
    report = version.report
    return canonical_form(
        report_id=report.pk,
        version_id=version.pk,
        number=version.number,
        kind=version.kind,
        institution_id=report.institution_id,
        study=study_identity(report.study),
        content=version.content,
        key_images=version.key_images,
        signer={
            "username": version.signer.get_username(),
            "name": version.signer_name,
            "key": version.signing_key.fingerprint,
        },
        signed_at=version.signed_at,
        previous_sha256=version.previous_sha256,
    )


def study_identity(study: Any) -> dict[str, str]:
    return {
        "uid": study.study_instance_uid,
        "accession": study.accession_number,
        "patient_id": study.patient.patient_id,
    }


@dataclass
class Verification:
    valid: bool
    problems: list[str] = field(default_factory=list)
    version: int = 0
    code: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "valid": self.valid, "problems": self.problems, "code": self.code}


def verify(version: Any, *, previous: Any = None, check_archive: bool = True) -> Verification:
    """Whether ``version`` is exactly what its signer signed, with every reason it is not."""
    problems: list[str] = []
    stored = bytes(version.canonical)
    rebuilt = form_of(version)
    if rebuilt != stored:
        problems.append("the stored content differs from what was signed")
    if hashlib.sha256(stored).hexdigest() != version.canonical_sha256:
        problems.append("the signed form's digest does not match")
    key = version.signing_key
    if hashlib.sha256(bytes(key.public_key)).hexdigest() != key.fingerprint:
        problems.append("the signer's public key does not match its fingerprint")
    if key.user_id != version.signer_id:
        problems.append("the key belongs to someone else")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(key.public_key)).verify(bytes(version.signature), stored)
    except (InvalidSignature, ValueError):
        problems.append("the signature does not verify")
    if verification_code(bytes(version.signature)) != version.verification_code:
        problems.append("the verification code does not match the signature")
    if previous is not None and previous.canonical_sha256 != version.previous_sha256:
        problems.append("the chain to the previous version is broken")
    if check_archive:
        from archive.models import Instance

        uids = [k["sop_instance_uid"] for k in version.key_images]
        archived = dict(
            Instance.objects.filter(
                sop_instance_uid__in=uids, institution_id=version.report.institution_id
            ).values_list("sop_instance_uid", "sha256")
        )
        for k in version.key_images:
            if archived.get(k["sop_instance_uid"]) != k["sha256"]:
                problems.append(f"key image {k['sop_instance_uid']} differs from the archived object")
    return Verification(not problems, problems, version.number, version.verification_code)


def verify_report(report: Any) -> list[Verification]:
    """Every version of ``report``, each checked on its own and against its predecessor."""
    results = []
    previous = None
    for version in report.versions.select_related("signing_key", "signer", "report__study__patient").order_by("number"):
        results.append(verify(version, previous=previous))
        previous = version
    return results


# The signing window -----------------------------------------------------------------

_WINDOW_SESSION_KEY = "reports.sign_window"


def _window_place(request: Any, user: Any) -> tuple[str, Any] | None:
    """Where ``request``'s window lives: ``("token", id)``, ``("session", session)``, or None (no window).

    A bearer token wins over a session cookie, as it does for authentication;
    a session counts only when it is ``user``'s signed-in session.
    """
    if request is None:
        return None
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        return ("token", token.pk) if token.user_id == user.pk else None
    session = getattr(request, "session", None)
    if session is not None and session.get(SESSION_KEY) == str(user.pk):
        return ("session", session)
    return None


def _token_cache_key(token_id: object) -> str:
    return f"reports:sign-window:token:{token_id}"


def _binding(user: Any) -> str:
    """HMAC of the user's current password hash, read afresh (a cached user may be seconds old)."""
    stored = User.objects.filter(pk=user.pk, is_active=True).values_list("password", flat=True).first()
    if not stored:
        return ""
    return salted_hmac("cloud-pacs.reports.sign-window", f"{user.pk}|{stored}", algorithm="sha256").hexdigest()


def open_window(request: Any, user: Any) -> datetime | None:
    """Open (or restart) the signing window of ``request``'s session or token; its end, or None if none opens."""
    seconds = settings.REPORTS_SIGN_WINDOW_SECONDS
    place = _window_place(request, user)
    binding = _binding(user)
    if seconds <= 0 or place is None or not binding:
        return None
    until = timezone.now() + timedelta(seconds=seconds)
    record = {"user": str(user.pk), "binding": binding, "until": until.timestamp()}
    kind, holder = place
    if kind == "token":
        cache.set(_token_cache_key(holder), record, timeout=seconds)
    else:
        holder[_WINDOW_SESSION_KEY] = record
    return until


def window_until(request: Any, user: Any) -> datetime | None:
    """The end of ``user``'s open signing window on ``request``'s session or token, or None."""
    place = _window_place(request, user)
    if place is None:
        return None
    kind, holder = place
    record = cache.get(_token_cache_key(holder)) if kind == "token" else holder.get(_WINDOW_SESSION_KEY)
    if not isinstance(record, dict) or record.get("user") != str(user.pk):
        return None
    until = datetime.fromtimestamp(float(record.get("until", 0)), tz=UTC)
    if until <= timezone.now():
        return None
    if not constant_time_compare(str(record.get("binding", "")), _binding(user)):
        return None  # the password changed since the window opened
    return until


def close_window(request: Any, user: Any) -> None:
    """End the signing window of ``request``'s session or token, if any."""
    place = _window_place(request, user)
    if place is None:
        return
    kind, holder = place
    if kind == "token":
        cache.delete(_token_cache_key(holder))
    else:
        holder.pop(_WINDOW_SESSION_KEY, None)
