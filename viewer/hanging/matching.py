"""Which hanging protocol applies to a study opened by a user."""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from archive.models import Study
from archive.priors.selection import regions_of
from pacs_cloud.access import institution_ids

from .models import HangingProtocol


def study_facts(study: Study) -> tuple[list[str], set[str]]:
    """The study's image modalities and body regions (as the prior rules see them)."""
    parts = list(study.series.values_list("body_part", flat=True))
    return study.image_modalities, regions_of(parts, study.description)


def candidates(user: Any, study: Study) -> list[HangingProtocol]:
    """The user's own protocols, then those of their institutions and of the study's, each in position order."""
    own = list(HangingProtocol.objects.filter(user_id=user.pk).order_by("position", "created_at"))
    institutions = institution_ids(user) | {study.institution_id}
    shared = HangingProtocol.objects.filter(Q(institution_id__in=institutions)).order_by("position", "created_at")
    return own + list(shared)


def protocol_for(user: Any, study: Study, priors: int) -> HangingProtocol | None:
    """The first protocol whose modality, body region and number of priors fit ``study``."""
    modalities, regions = study_facts(study)
    for protocol in candidates(user, study):
        if protocol.modality and protocol.modality not in modalities:
            continue
        if protocol.body_region and protocol.body_region not in regions:
            continue
        if protocol.min_priors > priors:
            continue
        return protocol
    return None
