"""Changes the viewer makes: marking and unmarking key images."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from archive.models import Instance
from pacs_cloud import audit, push

from .models import KeyImage

MAX_NOTE = 500


def _announce(key_image: KeyImage, event: str) -> None:
    push.notify(
        push.user_group(key_image.user_id),
        "viewer.key_image",
        {"event": event, "id": str(key_image.pk), "study": str(key_image.study_id)},
    )


def do_mark_key_image(*, acting_user: Any, instance: Instance, frame: int = 1, note: str = "") -> KeyImage:
    """Mark frame ``frame`` (1-based) of ``instance`` as a key image of its study for ``acting_user``.

    The caller has already checked that ``acting_user`` may see the study.
    Marking the same frame again updates the note and returns the same row.
    """
    if not 1 <= frame <= max(instance.number_of_frames, 1):
        raise ValidationError(f"frame {frame} does not exist; the instance has {instance.number_of_frames}")
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise ValidationError(f"the note is longer than {MAX_NOTE} characters")
    study = instance.series.study
    with transaction.atomic():
        try:
            with transaction.atomic():
                key_image, created = KeyImage.objects.select_for_update().get_or_create(
                    instance=instance,
                    frame=frame,
                    user=acting_user,
                    defaults={"study": study, "note": note},
                )
        except IntegrityError:  # a concurrent mark of the same frame won the race
            key_image, created = (
                KeyImage.objects.select_for_update().get(instance=instance, frame=frame, user=acting_user),
                False,
            )
        if not created and key_image.note != note:
            key_image.note = note
            key_image.save(update_fields=["note"])
        audit.record(
            "viewer.key_image.mark" if created else "viewer.key_image.update",
            actor=acting_user,
            object_type="key_image",
            object_id=key_image.pk,
            patient_id=study.patient.patient_id,
            institution=study.institution_id,
            detail={"study": str(study.pk), "sop_instance_uid": instance.sop_instance_uid, "frame": frame},
        )
        _announce(key_image, "marked")
    return key_image


def do_unmark_key_image(key_image: KeyImage, *, acting_user: Any) -> None:
    """Remove a key image; only the user who marked it may."""
    if key_image.user_id != acting_user.pk:
        raise PermissionDenied("Only the reader who marked a key image can remove it.")
    with transaction.atomic():
        locked = KeyImage.objects.select_for_update().filter(pk=key_image.pk).first()
        if locked is None:
            return
        study = locked.study
        audit.record(
            "viewer.key_image.unmark",
            actor=acting_user,
            object_type="key_image",
            object_id=locked.pk,
            patient_id=study.patient.patient_id,
            institution=study.institution_id,
            detail={"study": str(study.pk), "instance": str(locked.instance_id), "frame": locked.frame},
        )
        _announce(locked, "unmarked")
        locked.delete()
