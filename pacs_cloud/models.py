"""Tenancy, tokens, the audit trail and the state-transition log."""

from __future__ import annotations

import hashlib
import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """A person who signs in. What they may do comes from their memberships."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    is_platform_admin = models.BooleanField(
        default=False, help_text="Operates the service for all institutions; sees no PHI by this role alone."
    )
    display_name = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return self.display_name or self.username


class CharacterSet(models.TextChoices):
    # Specific Character Set (0008,0005) defined terms, PS3.3 C.12.1.1.2
    UTF8 = "ISO_IR 192", "Unicode UTF-8 (ISO_IR 192)"
    GB18030 = "GB18030", "Chinese GB18030"
    LATIN1 = "ISO_IR 100", "Latin-1 (ISO_IR 100)"


LANGUAGES = {"zh-Hans": "简体中文", "en": "English"}


def default_languages() -> list[str]:
    return ["en"]


class Institution(models.Model):
    class Kind(models.TextChoices):
        HOSPITAL = "hospital", "Hospital"
        READING_CENTRE = "reading_centre", "Reading centre"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.HOSPITAL)
    accession_prefix = models.CharField(
        max_length=8, help_text="Leading characters of every accession number issued here."
    )
    patient_id_issuer = models.CharField(
        max_length=64, help_text="Issuer of Patient ID (0010,0021) for identifiers assigned here."
    )
    patient_id_prefix = models.CharField(
        max_length=8,
        blank=True,
        help_text="Leading characters of Patient IDs issued here; blank: the accession prefix.",
    )
    time_zone = models.CharField(max_length=64, default="UTC")
    character_set = models.CharField(
        max_length=16,
        choices=CharacterSet.choices,
        default=CharacterSet.UTF8,
        help_text="Specific Character Set (0008,0005) the hospital's modalities use; each worklist station sets its own.",
    )
    languages = models.JSONField(
        default=default_languages,
        blank=True,
        help_text='Languages of its pages and reports, first preferred, e.g. ["zh-Hans", "en"].',
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def patient_prefix(self) -> str:
        return self.patient_id_prefix or self.accession_prefix


class Role(models.TextChoices):
    TECHNOLOGIST = "technologist", "Technologist"
    RADIOLOGIST = "radiologist", "Radiologist"
    REFERRAL_COORDINATOR = "referral_coordinator", "Referral coordinator"
    CLINICIAN = "clinician", "Clinician"
    INSTITUTION_ADMIN = "institution_admin", "Institution administrator"


# Roles whose work needs the institution's own patient data.
CLINICAL_ROLES = frozenset({Role.TECHNOLOGIST, Role.RADIOLOGIST, Role.REFERRAL_COORDINATOR, Role.CLINICIAN})


class Membership(models.Model):
    """One role of one user at one institution; a user may hold several."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "institution", "role"], name="membership_unique_role"),
        ]
        indexes = [models.Index(fields=["institution", "role"])]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} at {self.institution}"


def role_group_name(institution: Institution, role: str) -> str:
    """Name of the auth group holding one role at one institution.

    Object-level grants to an institution (referrals, shares) are written to
    these groups, so a new member inherits them and a removed one loses them.
    """
    return f"{institution.slug}:{role}"


class ApiToken(models.Model):
    """A bearer token for the REST API and DICOMweb. Only its SHA-256 is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to tell tokens apart in lists.")
    name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()


class AuditEvent(models.Model):
    """One append-only, hash-chained record of an access or change.

    Plain columns instead of foreign keys: deleting a user or an institution
    must never touch the trail. PostgreSQL refuses UPDATE and DELETE on this
    table (see migration 0002); ``manage.py verify_audit`` checks the chain.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        DENIED = "denied"
        FAILURE = "failure"

    id = models.BigAutoField(primary_key=True)
    time = models.DateTimeField(default=timezone.now)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, blank=True, help_text="Username, AE title or token name")
    role = models.CharField(max_length=32, blank=True)
    institution_id = models.UUIDField(null=True, blank=True, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=128, blank=True)
    patient_id = models.CharField(max_length=64, blank=True)
    client_address = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    detail = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["object_type", "object_id"]), models.Index(fields=["actor_id", "time"])]


class Transition(models.Model):
    """Append-only history of every state change of every state machine.

    It is the timeline shown to users, part of the audit, and the outbox that
    periodic sweeps read.
    """

    id = models.BigAutoField(primary_key=True)
    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT)
    object_id = models.UUIDField(db_index=True)
    source = models.CharField(max_length=32)
    target = models.CharField(max_length=32)
    method = models.CharField(max_length=64)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, blank=True, help_text="Who, when not a user (an AE, a sweep)")
    institution = models.ForeignKey(Institution, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    time = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["content_type", "object_id", "id"])]


class Invitation(models.Model):
    """A one-time link that lets one person set a password and join an institution with given roles.

    Only the SHA-256 of the link's token is stored; the token itself is shown
    once, to whoever invited. It works until ``expires_at``, once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="invitations")
    token_hash = models.CharField(max_length=64, unique=True)
    email = models.EmailField(blank=True)
    display_name = models.CharField(max_length=200, blank=True)
    roles = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @property
    def role_labels(self) -> list[str]:
        return [str(Role(role).label) if role in Role.values else role for role in self.roles]

    @property
    def state(self) -> str:
        if self.accepted_at is not None:
            return "accepted"
        return "open" if self.expires_at > timezone.now() else "expired"
