"""Choosing a study's relevant priors: a few small queries, whatever the patient's history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from ..models import NON_IMAGE_MODALITIES, Series, Study
from .models import PriorRule

# Body Part Examined (0018,0015; PS3.16 Annex L) and description words → the
# region a reader compares. A value not listed is its own region.
_REGION_OF = {
    "HEAD": "HEAD", "BRAIN": "HEAD", "SKULL": "HEAD", "ORBIT": "HEAD", "SINUS": "HEAD", "IAC": "HEAD",
    "FACE": "HEAD", "头颅": "HEAD", "头部": "HEAD",
    "NECK": "NECK", "THYROID": "NECK", "颈部": "NECK",
    "CHEST": "CHEST", "THORAX": "CHEST", "LUNG": "CHEST", "HEART": "CHEST", "胸部": "CHEST",
    "ABDOMEN": "ABDOMEN", "LIVER": "ABDOMEN", "PANCREAS": "ABDOMEN", "KIDNEY": "ABDOMEN", "腹部": "ABDOMEN",
    "PELVIS": "PELVIS", "PROSTATE": "PELVIS", "BLADDER": "PELVIS", "UTERUS": "PELVIS", "盆腔": "PELVIS",
    "ABDOMENPELVIS": "ABDOMEN PELVIS", "CHESTABDOMEN": "CHEST ABDOMEN", "CHESTABDPELVIS": "CHEST ABDOMEN PELVIS",
    "SPINE": "SPINE", "CSPINE": "SPINE", "TSPINE": "SPINE", "LSPINE": "SPINE", "SSPINE": "SPINE", "脊柱": "SPINE",
    "BREAST": "BREAST", "乳腺": "BREAST",
    "EXTREMITY": "EXTREMITY", "KNEE": "EXTREMITY", "HIP": "EXTREMITY", "SHOULDER": "EXTREMITY",
    "HAND": "EXTREMITY", "FOOT": "EXTREMITY", "ANKLE": "EXTREMITY", "WRIST": "EXTREMITY", "ELBOW": "EXTREMITY",
}  # fmt: skip
REGIONS = frozenset(r for value in _REGION_OF.values() for r in value.split())

# Modalities a reader compares with each other (PET with its CT, the
# radiographs with each other, breast imaging together).
_RELATED = {
    "CT": {"CT", "PT"},
    "PT": {"PT", "CT", "NM"},
    "NM": {"NM", "PT"},
    "MR": {"MR"},
    "CR": {"CR", "DX"},
    "DX": {"DX", "CR"},
    "MG": {"MG", "US"},
    "XA": {"XA", "RF"},
    "RF": {"RF", "XA"},
}


@dataclass(frozen=True)
class Criteria:
    """What one rule (or the defaults) asks of a prior."""

    modality_match: str = PriorRule.ModalityMatch.RELATED
    same_region: bool = True
    years: int = 5
    max_priors: int = 3
    rule: str = "default"


DEFAULTS = Criteria()


def regions_of(body_parts: list[str], description: str = "") -> set[str]:
    """The body regions named by series' Body Part Examined, or failing that by the description's words."""
    regions: set[str] = set()
    for part in body_parts:
        key = part.strip().upper().replace(" ", "").replace("_", "")
        if key:
            regions.update(_REGION_OF.get(key, key).split())
    if not regions:
        for word in description.upper().replace("/", " ").replace("-", " ").split():
            if word in _REGION_OF:
                regions.update(_REGION_OF[word].split())
    return regions


def _modalities(value: str) -> set[str]:
    return {m for m in value.upper().split("\\") if m and m not in NON_IMAGE_MODALITIES}


def _modalities_match(current: set[str], prior: set[str], how: str) -> bool:
    if how == PriorRule.ModalityMatch.ANY:
        return bool(prior)
    if how == PriorRule.ModalityMatch.SAME:
        return bool(current & prior)
    related = set().union(*(_RELATED.get(m, {m}) for m in current)) if current else set()
    return bool(related & prior)


def criteria_for(institution_id: Any, modalities: set[str], regions: set[str]) -> Criteria:
    """The first active rule of the institution matching the study read, or the defaults."""
    for rule in PriorRule.objects.filter(institution_id=institution_id, is_active=True).order_by(
        "position", "created_at"
    ):
        if rule.modality and rule.modality not in modalities:
            continue
        if rule.body_region and rule.body_region not in regions:
            continue
        return Criteria(rule.modality_match, rule.same_region, rule.years, rule.max_priors, rule.name)
    return DEFAULTS


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


# Read only when linked patients are candidates: to count an imported copy once.
_LINKED_COLUMNS = ("study__study_instance_uid", "study__institution_id")


def _without_linked_copies(rows: list[Any], study: Study) -> list[Any]:
    """The rows without a linked hospital's study of which the reading hospital holds a copy (same UID)."""
    own_uids = {row[5] for row in rows if row[6] == study.institution_id}
    return [row for row in rows if row[6] == study.institution_id or row[5] not in own_uids]


def select_priors(study: Study, *, linked_patients: Iterable[Any] = ()) -> list[Study]:
    """The relevant priors of ``study``, newest first: earlier studies of its patient at its institution.

    ``linked_patients``: the same person's patients at other hospitals whose
    studies may be compared (a patient link with consent, ``workflow.links``):
    their studies are candidates under the same rules (the reading
    hospital's), and a study imported from one of them counts once, as the
    reading hospital's own copy.

    A study without a date has no priors (nothing says what is earlier). A
    study of the same date counts as earlier when its time is; a study without
    series has no images to compare. Four small queries whatever the
    patient's history: the current study's series, the rules, the series of
    the earlier studies within the rule's years (one join), the chosen rows.
    """
    if study.study_date is None:
        return []
    current_series = list(Series.objects.filter(study_id=study.pk).values_list("modality", "body_part"))
    current_modalities = _modalities(study.modalities) | {m.upper() for m, _ in current_series if m}
    current_modalities -= NON_IMAGE_MODALITIES
    current_regions = regions_of([part for _, part in current_series], study.description)
    criteria = criteria_for(study.institution_id, current_modalities, current_regions)
    since = _years_before(study.study_date, criteria.years)
    earlier = Q(study__study_date__lt=study.study_date) | Q(
        study__study_date=study.study_date, study__study_time__lt=study.study_time or dt.time.min
    )
    whose = Q(study__patient_id=study.patient_id, study__institution_id=study.institution_id)
    linked = list(linked_patients)
    if linked:
        whose |= Q(study__patient_id__in=linked)
    rows = (
        Series.objects.filter(earlier, whose, study__study_date__gte=since)
        .exclude(study_id=study.pk)
        .order_by("-study__study_date", "-study__study_time", "study_id")
        .values_list(
            "study_id",
            "study__modalities",
            "study__description",
            "modality",
            "body_part",
            *_LINKED_COLUMNS[: 2 * bool(linked)],
        )
    )
    candidates: dict[Any, tuple[set[str], str, list[str]]] = {}  # in order, newest first
    listed: Iterable[Any] = _without_linked_copies(list(rows), study) if linked else rows
    for study_id, study_modalities, description, modality, body_part, *_ in listed:
        found = candidates.setdefault(study_id, (_modalities(study_modalities), description, []))
        if modality and modality.upper() not in NON_IMAGE_MODALITIES:
            found[0].add(modality.upper())
        found[2].append(body_part)
    chosen: list[Any] = []
    for study_id, (modalities, description, parts) in candidates.items():
        if not _modalities_match(current_modalities, modalities, criteria.modality_match):
            continue
        # A study whose region is unknown is compared by modality alone.
        if criteria.same_region and current_regions and not current_regions & regions_of(parts, description):
            continue
        chosen.append(study_id)
        if len(chosen) >= criteria.max_priors:
            break
    if not chosen:
        return []
    found_rows = Study.objects.select_related("institution").in_bulk(chosen)
    return [found_rows[pk] for pk in chosen if pk in found_rows]
