"""The facts a routing policy matches a study on.

The order (priority, procedure, body part, clinical question) comes from the
worklist app's ``worklist.facts.study_order_facts(study)``; a study without an
order, or one arriving before the worklist knows of it, is routed on its own
DICOM attributes: modalities in the study, Body Part Examined (0018,0015) of
its series and the patient's age at the study date.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from archive.models import Instance, Series, Study

from .models import normalise_priority
from .policy import StudyFacts

# Object modalities that say nothing about how a study is read (PS3.3 C.7.3.1.1.1).
_NON_IMAGE = {"SR", "PR", "KO", "SEG", "REG", "RWV", "DOC", "OT", "PLAN", "RTSTRUCT"}


def _order_facts(study: Study) -> Any:
    try:
        from worklist.facts import study_order_facts
    except ImportError:  # the worklist app predates order facts
        return None
    return study_order_facts(study)


def _get(source: Any, name: str, default: Any = "") -> Any:
    if source is None:
        return default
    value = source.get(name, default) if isinstance(source, dict) else getattr(source, name, default)
    return default if value is None else value


def _age(birth: date | None, on: date | None) -> int | None:
    if birth is None:
        return None
    on = on or date.today()  # noqa: DTZ011 (a study without a date is aged as of today)
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return years if 0 <= years <= 150 else None


def _age_string(study: Study) -> int | None:
    """Patient's Age (0010,1010), an AS string such as ``045Y`` or ``006M`` (PS3.5 6.2), in whole years."""
    metadata = Instance.objects.filter(series__study=study).values_list("metadata", flat=True).first() or {}
    value = (metadata.get("00101010") or {}).get("Value") or [""]
    text = str(value[0]).strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in "DWMY":
        return None
    number = int(text[:3])
    return {"D": number // 365, "W": number // 52, "M": number // 12, "Y": number}[text[3]]


def study_facts(study: Study) -> StudyFacts:
    """Facts for ``study``; the order's where it has one, else the images'."""
    series = list(Series.objects.filter(study=study).values_list("modality", "body_part", "num_instances"))
    modality_counts: Counter[str] = Counter()
    part_counts: Counter[str] = Counter()
    for modality, body_part, count in series:
        if modality:
            modality_counts[modality.upper()] += max(count, 1)
        if body_part and modality.upper() not in _NON_IMAGE:
            part_counts[body_part.upper()] += max(count, 1)
    declared = [m.upper() for m in study.modalities.split("\\") if m]
    modalities = sorted(set(declared) | set(modality_counts))
    imaging = [m for m, _ in modality_counts.most_common() if m not in _NON_IMAGE]
    modality = imaging[0] if imaging else (modalities[0] if modalities else "")

    order = _order_facts(study)
    patient = study.patient
    facts = StudyFacts(
        modality=(str(_get(order, "modality")) or modality).upper(),
        modalities=modalities,
        body_part=(str(_get(order, "body_part")) or (part_counts.most_common(1)[0][0] if part_counts else "")).upper(),
        procedure_code=str(_get(order, "procedure_code")).upper(),
        procedure=str(_get(order, "procedure_name") or _get(order, "procedure") or study.description)[:200],
        priority=normalise_priority(_get(order, "priority", "routine")),
        clinical_question=str(_get(order, "clinical_info") or _get(order, "clinical_question"))[:2000],
        patient_age=_age(patient.birth_date, study.study_date) if patient.birth_date else _age_string(study),
        order_id=str(_get(order, "order_id") or _get(_get(order, "order", None), "pk") or ""),
        source="order" if order is not None else "images",
    )
    if facts.modality and facts.modality not in facts.modalities:
        facts.modalities = sorted({*facts.modalities, facts.modality})
    return facts
