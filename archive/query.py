"""Matching studies, series and instances: the engine behind QIDO-RS and C-FIND.

Both services describe a query the same way — matching keys by attribute
and a level — and get the same answers. Matching follows PS3.4 C.2.2.2:

* an empty value or ``*`` matches everything (a "return key");
* UIDs: single value or list matching (``\\`` or ``,`` separated);
* dates and times: single value or range (``from-``, ``-to``, ``from-to``);
* other text: single value, or wildcards ``*`` and ``?``;
* person names: case- and accent-insensitive, wildcards allowed, and a key
  without ``=`` matches any of the alphabetic, ideographic and phonetic
  groups; with fuzzy matching (QIDO ``fuzzymatching=true``) every word of
  the key must start a word of the name, in any group (``wang`` finds
  ``Wang^XiaoDong``, ``小东`` finds ``王^小东``);
* ModalitiesInStudy: the study has a series of any listed modality;
* RequestAttributesSequence: by its Scheduled Procedure Step ID and
  Requested Procedure ID (sequence matching, one item).

Every attribute that can be matched is an indexed column; attributes asked
for that the index does not hold come from a stored instance's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, Lookup, Q, QuerySet, Value
from django.db.models.fields import CharField

from pacs_cloud.lib import dicom_datetime

from . import names
from .models import Instance, Series, Study

STUDY, SERIES, INSTANCE = "STUDY", "SERIES", "IMAGE"
LEVELS = (STUDY, SERIES, INSTANCE)


class QueryError(ValueError):
    """A matching key that cannot be understood (400 in QIDO, 0xA900 in C-FIND)."""


class _Like(Lookup):
    """``lhs LIKE rhs`` with ``\\`` as the escape character, on every backend."""

    lookup_name = "dicom_like"

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} LIKE {rhs} ESCAPE '\\'", (*lhs_params, *rhs_params)


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_q(path: str, value: str) -> Q:
    if has_wildcard(value):
        return Q(_Like(F(path), Value(like_pattern(value), output_field=CharField())))
    return Q(**{path: value})


# Values as DICOM JSON elements (PS3.18 F.2) -------------------------------------


def _element(vr: str, values: list[Any]) -> dict[str, Any]:
    if len(values) == 1:  # the common case, kept cheap: every answer row holds a dozen of these
        value = values[0]
        return {"vr": vr} if value is None or value == "" else {"vr": vr, "Value": values}
    values = [v for v in values if v is not None and v != ""]
    return {"vr": vr, "Value": values} if values else {"vr": vr}


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def pn_value(full: str) -> dict[str, str]:
    """A stored PN value (groups joined by ``=``) as DICOM JSON's PN object (PS3.18 F.2.2)."""
    return {name: group for name, group in zip(_PN_GROUPS, full.split("=")[:3], strict=False) if group}


def _pn(full: str) -> dict[str, Any]:
    value = pn_value(full)
    return {"vr": "PN", "Value": [value]} if value else {"vr": "PN"}


# The attributes -----------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: str  # 8 hex digits, as in DICOM JSON
    vr: str
    level: str  # the level whose row holds it (STUDY also holds the patient's)
    kind: str  # uid, text, pn, date, time, int, modalities, none
    path: str  # ORM path from the row of ``level`` ('' when not matchable)
    get: Callable[[Any, Context], dict[str, Any]]


@dataclass
class Context:
    base_url: str = ""  # for RetrieveURL: ".../dicomweb"


def _study_url(study: Study, ctx: Context) -> str:
    return f"{ctx.base_url}/studies/{study.study_instance_uid}"


ATTRIBUTES: list[Attribute] = [
    # Study (and patient) level
    Attribute("StudyDate", "00080020", "DA", STUDY, "date", "study_date",
              lambda s, c: _element("DA", [dicom_datetime.format_da(s.study_date)])),
    Attribute("StudyTime", "00080030", "TM", STUDY, "time", "study_time",
              lambda s, c: _element("TM", [dicom_datetime.format_tm(s.study_time)])),
    Attribute("AccessionNumber", "00080050", "SH", STUDY, "text", "accession_number",
              lambda s, c: _element("SH", [s.accession_number])),
    Attribute("InstanceAvailability", "00080056", "CS", STUDY, "none", "", lambda s, c: _element("CS", ["ONLINE"])),
    Attribute("ModalitiesInStudy", "00080061", "CS", STUDY, "modalities", "modalities",
              lambda s, c: _element("CS", [m for m in s.modalities.split("\\") if m])),
    Attribute("ReferringPhysicianName", "00080090", "PN", STUDY, "pn_simple", "referring_physician_search",
              lambda s, c: _pn(s.referring_physician)),
    Attribute("StudyDescription", "00081030", "LO", STUDY, "text", "description",
              lambda s, c: _element("LO", [s.description])),
    Attribute("RetrieveURL", "00081190", "UR", STUDY, "none", "", lambda s, c: _element("UR", [_study_url(s, c)])),
    Attribute("PatientName", "00100010", "PN", STUDY, "pn", "patient__", lambda s, c: _pn(s.patient.name)),
    Attribute("PatientID", "00100020", "LO", STUDY, "text", "patient__patient_id",
              lambda s, c: _element("LO", [s.patient.patient_id])),
    Attribute("IssuerOfPatientID", "00100021", "LO", STUDY, "text", "patient__issuer",
              lambda s, c: _element("LO", [_issuer(s.patient.issuer)])),
    Attribute("PatientBirthDate", "00100030", "DA", STUDY, "date", "patient__birth_date",
              lambda s, c: _element("DA", [dicom_datetime.format_da(s.patient.birth_date)])),
    Attribute("PatientSex", "00100040", "CS", STUDY, "text", "patient__sex", lambda s, c: _element("CS", [s.patient.sex])),
    Attribute("StudyInstanceUID", "0020000D", "UI", STUDY, "uid", "study_instance_uid",
              lambda s, c: _element("UI", [s.study_instance_uid])),
    Attribute("StudyID", "00200010", "SH", STUDY, "text", "study_id", lambda s, c: _element("SH", [s.study_id])),
    Attribute("NumberOfStudyRelatedSeries", "00201206", "IS", STUDY, "none", "",
              lambda s, c: _element("IS", [s.num_series])),
    Attribute("NumberOfStudyRelatedInstances", "00201208", "IS", STUDY, "none", "",
              lambda s, c: _element("IS", [s.num_instances])),
    # Series level
    Attribute("Modality", "00080060", "CS", SERIES, "text", "modality", lambda s, c: _element("CS", [s.modality])),
    Attribute("SeriesDescription", "0008103E", "LO", SERIES, "text", "description",
              lambda s, c: _element("LO", [s.description])),
    Attribute("BodyPartExamined", "00180015", "CS", SERIES, "text", "body_part",
              lambda s, c: _element("CS", [s.body_part])),
    Attribute("SeriesInstanceUID", "0020000E", "UI", SERIES, "uid", "series_instance_uid",
              lambda s, c: _element("UI", [s.series_instance_uid])),
    Attribute("SeriesNumber", "00200011", "IS", SERIES, "int", "series_number",
              lambda s, c: _element("IS", [s.series_number])),
    Attribute("NumberOfSeriesRelatedInstances", "00201209", "IS", SERIES, "none", "",
              lambda s, c: _element("IS", [s.num_instances])),
    Attribute("PerformedProcedureStepStartDate", "00400244", "DA", SERIES, "date", "performed_start_date",
              lambda s, c: _element("DA", [dicom_datetime.format_da(s.performed_start_date)])),
    Attribute("PerformedProcedureStepStartTime", "00400245", "TM", SERIES, "time", "performed_start_time",
              lambda s, c: _element("TM", [dicom_datetime.format_tm(s.performed_start_time)])),
    Attribute("RequestAttributesSequence", "00400275", "SQ", SERIES, "request", "",
              lambda s, c: _request_attributes(s)),
    # Instance level
    Attribute("SOPClassUID", "00080016", "UI", INSTANCE, "uid", "sop_class_uid",
              lambda s, c: _element("UI", [s.sop_class_uid])),
    Attribute("SOPInstanceUID", "00080018", "UI", INSTANCE, "uid", "sop_instance_uid",
              lambda s, c: _element("UI", [s.sop_instance_uid])),
    Attribute("AvailableTransferSyntaxUID", "00083002", "UI", INSTANCE, "none", "",
              lambda s, c: _element("UI", [s.transfer_syntax_uid])),
    Attribute("InstanceNumber", "00200013", "IS", INSTANCE, "int", "instance_number",
              lambda s, c: _element("IS", [s.instance_number])),
    Attribute("NumberOfFrames", "00280008", "IS", INSTANCE, "int", "number_of_frames",
              lambda s, c: _element("IS", [s.number_of_frames])),
    Attribute("Rows", "00280010", "US", INSTANCE, "int", "rows", lambda s, c: _element("US", [s.rows])),
    Attribute("Columns", "00280011", "US", INSTANCE, "int", "columns", lambda s, c: _element("US", [s.columns])),
    Attribute("BitsAllocated", "00280100", "US", INSTANCE, "int", "bits_allocated",
              lambda s, c: _element("US", [s.bits_allocated])),
]  # fmt: skip

BY_TAG = {a.tag: a for a in ATTRIBUTES}
BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}
REQUEST_KEYS = {"00400009": "scheduled_procedure_step_id", "00401001": "requested_procedure_id"}
REQUEST_KEYWORDS = {"ScheduledProcedureStepID": "00400009", "RequestedProcedureID": "00401001"}

# What a QIDO-RS answer holds by default at each level (PS3.18 Table 10.6.3-3..5).
DEFAULT_RETURN = {
    STUDY: [
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
        "ReferringPhysicianName", "StudyDescription", "RetrieveURL", "PatientName", "PatientID",
        "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ],
    SERIES: [
        "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID", "SeriesNumber",
        "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "RequestAttributesSequence", "BodyPartExamined",
    ],
    INSTANCE: [
        "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL", "InstanceNumber", "Rows",
        "Columns", "BitsAllocated", "NumberOfFrames", "AvailableTransferSyntaxUID",
    ],
}  # fmt: skip


def _issuer(issuer: str) -> str:
    return "" if issuer.startswith("no-patient-id:") else issuer


def _request_attributes(series: Series) -> dict[str, Any]:
    item = {}
    if series.scheduled_procedure_step_id:
        item["00400009"] = _element("SH", [series.scheduled_procedure_step_id])
    if series.requested_procedure_id:
        item["00401001"] = _element("SH", [series.requested_procedure_id])
    return {"vr": "SQ", "Value": [item]} if item else {"vr": "SQ"}


def attribute_for(key: str) -> Attribute | None:
    """The attribute a QIDO key or C-FIND keyword names: a keyword or 8 hex digits."""
    key = key.strip()
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return BY_TAG.get(key.upper())
    return BY_KEYWORD.get(key)


# Building the query -------------------------------------------------------------


_PREFIX = {
    (STUDY, STUDY): "",
    (STUDY, SERIES): "study__",
    (STUDY, INSTANCE): "series__study__",
    (SERIES, SERIES): "",
    (SERIES, INSTANCE): "series__",
    (INSTANCE, INSTANCE): "",
}


@dataclass
class Query:
    """One search: matching keys (tag -> value), level, and paging."""

    level: str
    keys: dict[str, str] = field(default_factory=dict)
    request_keys: dict[str, str] = field(default_factory=dict)  # RequestAttributesSequence items
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.replace(",", "\\").split("\\") if v.strip()]


def _range_q(path: str, value: str, parse: Callable[[str], tuple[Any, Any]]) -> Q:
    """DA or TM range matching (PS3.4 C.2.2.2.5) with inclusive bounds."""
    try:
        start, end = parse(value)
    except dicom_datetime.InvalidDicomDateTime as exc:
        raise QueryError(str(exc)) from exc
    q = Q()
    if start:
        q &= Q(**{f"{path}__gte": start})
    if end:
        q &= Q(**{f"{path}__lte": end})
    return q


def _pn_q(prefix: str, value: str, fuzzy: bool) -> Q:
    """Person name matching on the patient's matching columns (see :mod:`archive.names`)."""
    if fuzzy:
        return name_words_q(f"{prefix}name_words", value)
    columns = {"alphabetic": "name_search", "ideographic": "name_ideographic", "phonetic": "name_phonetic"}
    q = Q()
    for column, pattern in names.query_groups(value):
        if column == "any":
            any_group = Q()
            for name, path in columns.items():
                any_group |= _name_column_q(f"{prefix}{path}", names.fold_pattern(pattern, name))
            q &= any_group
        else:
            q &= _name_column_q(f"{prefix}{columns[column]}", names.fold_pattern(pattern, column))
    return q


def name_words_q(path: str, text: str) -> Q:
    """Rows whose name words (``path``, an :attr:`archive.names.NameForms.words` column) fit a typed name.

    Every word of ``text``, in any form a user types or pastes (``张三``,
    ``ZHANG, SAN``, ``张三 (ZHANG, SAN)``), must start a word of the name.
    A text without words (blank, punctuation) does not narrow.
    """
    q = Q()
    for alternatives in names.fuzzy_words(text):
        any_form = Q()
        for word in alternatives:
            any_form |= Q(_Like(F(path), Value(f"% {like_pattern(word)}%")))
        q &= any_form
    return q


def patient_name_q(text: str, *, prefix: str = "") -> Q:
    """Patients (through ``prefix``, e.g. ``patient__``) whose name fits a name typed in a search box."""
    return name_words_q(f"{prefix}name_words", text)


def _name_column_q(path: str, pattern: str) -> Q:
    if has_wildcard(pattern):
        # "WANG" written as "WANG^" or "WANG^^" matches as a family name.
        return Q(_Like(F(path), Value(like_pattern(pattern), output_field=CharField())))
    return Q(**{path: pattern}) | Q(_Like(F(path), Value(like_pattern(pattern) + "^%", output_field=CharField())))


def _modalities_q(path: str, value: str) -> Q:
    q = Q()
    for modality in _split_list(value):
        token = like_pattern(modality)
        q |= (
            Q(**{path: modality})
            | Q(_Like(F(path), Value(token + "\\\\%")))
            | Q(_Like(F(path), Value("%\\\\" + token)))
            | Q(_Like(F(path), Value("%\\\\" + token + "\\\\%")))
        )
    return q


def _key_q(attribute: Attribute, prefix: str, value: str, fuzzy: bool) -> Q:
    path = prefix + attribute.path
    if attribute.kind == "uid":
        uids = _split_list(value)
        return Q(**{path: uids[0]}) if len(uids) == 1 else Q(**{f"{path}__in": uids})
    if attribute.kind == "date":
        return _range_q(path, value, dicom_datetime.parse_da_range)
    if attribute.kind == "time":
        return _range_q(path, value, dicom_datetime.parse_tm_range)
    if attribute.kind == "int":
        try:
            return Q(**{f"{path}__in": [int(v) for v in _split_list(value)]})
        except ValueError:
            raise QueryError(f"{attribute.keyword} needs a number, not {value!r}") from None
    if attribute.kind == "pn":
        return _pn_q(path, value, fuzzy)
    if attribute.kind == "pn_simple":
        return _text_q(path, names.fold_pattern(value.split("=")[0], "alphabetic"))
    if attribute.kind == "modalities":
        return _modalities_q(path, value)
    if attribute.kind == "text":
        return _text_q(path, value)
    raise QueryError(f"{attribute.keyword} cannot be used as a matching key")


def is_universal(value: str | None) -> bool:
    return value is None or value.strip() in ("", "*")


def filter_queryset(qs: QuerySet, query: Query) -> QuerySet:
    """Apply the query's matching keys to a queryset of the query's level."""
    q = Q()
    for tag, value in query.keys.items():
        attribute = BY_TAG[tag]
        if is_universal(value) or attribute.kind in ("none", "request"):
            continue
        if LEVELS.index(attribute.level) > LEVELS.index(query.level):
            continue  # a lower level's key on a higher level's query: ignored, as PS3.4 allows
        q &= _key_q(attribute, _PREFIX[(attribute.level, query.level)], value, query.fuzzy)
    if query.request_keys and query.level != STUDY:
        prefix = _PREFIX[(SERIES, query.level)]
        for tag, value in query.request_keys.items():
            if not is_universal(value):
                q &= _text_q(prefix + REQUEST_KEYS[tag], value)
    return qs.filter(q)


def base_queryset(level: str, studies: QuerySet) -> QuerySet:
    """Rows of ``level`` among ``studies`` (already restricted to what the caller may see)."""
    if level == STUDY:
        return studies.select_related("patient").order_by("-study_date", "-study_time", "pk")
    if level == SERIES:
        return (
            Series.objects.filter(study__in=studies)
            .select_related("study__patient")
            .order_by("study__study_date", "study_id", "series_number", "pk")
        )
    return (
        Instance.objects.filter(series__study__in=studies)
        .select_related("series__study__patient")
        .defer("metadata")
        .order_by("series__study_id", "series__series_number", "series_id", "instance_number", "pk")
    )


def search(query: Query, studies: QuerySet, *, maximum: int) -> tuple[list[Any], bool]:
    """The matching rows (at most ``limit`` or ``maximum``) and whether more matched."""
    qs = filter_queryset(base_queryset(query.level, studies), query)
    count = min(query.limit or maximum, maximum)
    rows = list(qs[query.offset : query.offset + count + 1])
    return rows[:count], len(rows) > count


# Answers ---------------------------------------------------------------------------


def _owner(row: Any, level: str) -> Any:
    """The row of ``level`` that ``row`` (a study, series or instance) belongs to."""
    if isinstance(row, Study):
        return row
    if isinstance(row, Series):
        return row.study if level == STUDY else row
    if level == STUDY:
        return row.series.study
    if level == SERIES:
        return row.series
    return row


def attributes_of(row: Any, level: str, tags: Iterable[str], ctx: Context) -> dict[str, Any]:
    """DICOM JSON for ``row`` (of ``level``) holding ``tags``, from the index where it can.

    Tags the index does not hold are taken from a stored instance's metadata
    (the row's own, or the first of its series or study).
    """
    return answer_builder(level, tags, ctx)(row)


def answer_builder(level: str, tags: Iterable[str], ctx: Context) -> Callable[[Any], dict[str, Any]]:
    """:func:`attributes_of` for many rows of one answer: the tags are looked up once, not per row."""
    depth = LEVELS.index(level)
    getters: list[tuple[str, Callable[[Any], dict[str, Any]]]] = []
    missing: list[str] = []
    for tag in sorted(set(tags)):
        attribute = BY_TAG.get(tag)
        if attribute is None or LEVELS.index(attribute.level) > depth:
            missing.append(tag)
        elif attribute.keyword == "RetrieveURL":
            getters.append((tag, lambda row: _element("UR", [_retrieve_url(row, level, ctx)])))
        elif attribute.keyword == "InstanceAvailability":
            getters.append((tag, lambda row: {"vr": "CS", "Value": ["ONLINE"]}))
        else:
            getters.append((tag, _owned_getter(attribute, level, ctx)))

    def build(row: Any) -> dict[str, Any]:
        result = {tag: get(row) for tag, get in getters}
        overrides = _owner(row, STUDY).header_overrides
        if not missing and not overrides:
            return result  # already in tag order
        if missing:
            metadata = _representative_metadata(row, level)
            result.update((tag, metadata[tag]) for tag in missing if tag in metadata)
        if overrides:
            apply_overrides(result, overrides)
        return dict(sorted(result.items()))

    return build


def _owned_getter(attribute: Attribute, level: str, ctx: Context) -> Callable[[Any], dict[str, Any]]:
    if attribute.level == level:
        return lambda row: attribute.get(row, ctx)
    return lambda row: attribute.get(_owner(row, attribute.level), ctx)


def _retrieve_url(row: Any, level: str, ctx: Context) -> str:
    study = _owner(row, STUDY)
    url = _study_url(study, ctx)
    if level in (SERIES, INSTANCE):
        url += f"/series/{_owner(row, SERIES).series_instance_uid}"
    if level == INSTANCE:
        url += f"/instances/{row.sop_instance_uid}"
    return url


def _representative_metadata(row: Any, level: str) -> dict[str, Any]:
    from .ingest import metadata_of

    if isinstance(row, Instance):
        instance = Instance.objects.filter(pk=row.pk).first()
    else:
        qs = (
            Instance.objects.filter(series=row)
            if isinstance(row, Series)
            else Instance.objects.filter(series__study=row)
        )
        instance = qs.order_by("instance_number", "pk").first()
    return metadata_of(instance) if instance is not None else {}


# Corrections applied on the way out ---------------------------------------------

OVERRIDE_TAGS = {
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "IssuerOfPatientID": ("00100021", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
}


def apply_overrides(metadata: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Put a study's corrected Patient attributes into DICOM JSON (in place)."""
    for keyword, value in overrides.items():
        tag, vr = OVERRIDE_TAGS[keyword]
        if vr == "PN":
            metadata[tag] = _pn(value)
        else:
            metadata[tag] = _element(vr, [value])
    return metadata
