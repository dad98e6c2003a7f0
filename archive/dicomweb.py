"""DICOMweb (PS3.18) under ``/dicomweb/``: STOW-RS, QIDO-RS and WADO-RS.

Every request is authenticated like the REST API (bearer token, HTTP Basic
or the browser session), every study is found through the access policy
(``archive.access``: 404 alike for missing and not yours), and every read
writes an audit event. Retrievals stream: objects go out chunk by chunk from
storage, never assembled in memory.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections, connections, transaction
from django.http import Http404, HttpResponse, HttpResponseBase, StreamingHttpResponse
from pydicom.uid import ExplicitVRLittleEndian
from rest_framework import authentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from pacs_cloud import access, audit
from pacs_cloud.authentication import BasicAuthentication, BearerTokenAuthentication
from pacs_cloud.models import Institution, Role
from pacs_cloud.tenancy import current_institution

from . import query as q
from . import retrieve
from .access import access_study, searchable_studies, seen_as_prior
from .copies.lifecycle import note_study_read
from .copies.restore import pending_restore
from .ingest import (
    IngestError,
    IngestSession,
    Source,
    discard_unindexed,
    metadata_of,
    refusal,
    store_instance,
    store_part10,
)
from .models import Instance, Series, Study
from .multipart import Acceptable, MultipartError, PartReader, closing, new_boundary, parse_accept, parse_media_type
from .multipart import part_header as _part_header
from .storage import CHUNK, get_storage

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
STORE_ROLES = (Role.TECHNOLOGIST, Role.RADIOLOGIST)

# Failure Reason (0008,1197) values (PS3.18 Table I.2-1, PS3.4 B.2.3).
FAILURE_REASONS = {
    "too_large": 0xA700,  # out of resources
    "storage": 0xA700,
    "unreadable": 0xC000,  # cannot understand
    "truncated": 0xC000,
    "bad_uid": 0xC000,
    "bad_part": 0xC000,
    "not_an_image": 0x0122,  # SOP class not supported
    "unsupported_media": 0xC122,  # referenced transfer syntax / media type not supported
    "conflict": 0x0111,  # duplicate SOP instance with other content
    "inconsistent": 0xA900,  # data set does not match what is archived
    "wrong_study": 0xA900,
}


# Persistent worker threads for DICOMweb requests under ASGI (see on_worker_thread).
_workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dicomweb")


# A pooled connection that answered this recently is not probed again before
# the next request: CONN_HEALTH_CHECKS would otherwise cost every request a
# round trip ("SELECT 1"), as much as a QIDO search's own query.
_TRUSTED_FOR_SECONDS = 1.0
_answered = threading.local()


def _run_on_worker(view: Callable[..., Any], request: Any, *args: Any, **kwargs: Any) -> Any:
    # The thread and its database connection outlive the request: what Django
    # does around each request (drop a connection that broke or is past
    # CONN_MAX_AGE) is done here, before and after.
    close_old_connections()
    database = connections[DEFAULT_DB_ALIAS]
    if database.connection is not None and time.monotonic() - getattr(_answered, "at", 0.0) < _TRUSTED_FOR_SECONDS:
        database.health_check_done = True  # type: ignore[attr-defined]  # (not in django-stubs)
    try:
        return view(request, *args, **kwargs)
    finally:
        if database.connection is not None and not database.errors_occurred:
            _answered.at = time.monotonic()
        close_old_connections()


def on_worker_thread(view: Callable[..., Any]) -> Callable[..., Any]:
    """Serve a synchronous view from a pool of long-lived threads under ASGI.

    Django runs each request's synchronous code in a thread of its own, so
    every request opens a new database connection (some 10 ms here: more
    than a QIDO search takes). These threads keep theirs between requests.
    Under WSGI (and Django's test client) the view runs where it always did.
    """

    async def pooled(request: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(request, ASGIRequest):
            return await sync_to_async(_run_on_worker, thread_sensitive=False, executor=_workers)(
                view, request, *args, **kwargs
            )
        return await sync_to_async(view)(request, *args, **kwargs)

    pooled.csrf_exempt = getattr(view, "csrf_exempt", False)  # type: ignore[attr-defined]
    functools.update_wrapper(pooled, view)
    return markcoroutinefunction(pooled)


class _AnyAccept(BaseContentNegotiation):
    """Errors render as JSON whatever the Accept header: each view negotiates its own answer."""

    def select_parser(self, request: Any, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Any, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


class DicomWebView(APIView):
    authentication_classes = [
        BearerTokenAuthentication,
        BasicAuthentication,
        authentication.SessionAuthentication,
    ]
    permission_classes = [IsAuthenticated]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _AnyAccept
    schema = None  # DICOMweb is described by PS3.18, not by our OpenAPI schema


def dicomweb_base() -> str:
    """The public base of DICOMweb URLs we hand out (RetrieveURL, BulkDataURI).

    Built from ``CLOUD_URL`` rather than the request's Host header, which
    proxies rewrite and some clients send without the port.
    """
    return settings.CLOUD_URL.rstrip("/") + "/dicomweb"


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    # orjson: compact UTF-8, several times faster than json.dumps on large answers.
    response = HttpResponse(orjson.dumps(body), status=status, content_type=DICOM_JSON)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _problem(status: int, message: str) -> HttpResponse:
    return HttpResponse(json.dumps({"detail": message}), status=status, content_type="application/json")


def _not_restored(request: Request, study: Study, rows: list[Instance]) -> HttpResponse | None:
    """503 with ``Retry-After`` (PS3.18 8.5.2) while objects asked for wait for a restore from the archive tier."""
    pending = pending_restore(study, [r.pk for r in rows], requested_by=request.user)
    if pending is None:
        return None
    response = _problem(503, f"{pending.message()}; ask again after the time in Retry-After")
    response["Retry-After"] = str(pending.retry_after)
    return response


# Resolving studies, series and instances through the access policy ------------------


def _study(request: Request, study_uid: str) -> Study:
    return access_study(request.user, uid=study_uid)


def _series(study: Study, series_uid: str) -> Series:
    series = Series.objects.filter(study=study, series_instance_uid=series_uid).first()
    if series is None:
        raise Http404("No such series")
    return series


def _instances(study: Study, series_uid: str | None = None, sop_uid: str | None = None) -> list[Instance]:
    qs = Instance.objects.filter(series__study=study).select_related("series").defer("metadata")
    if series_uid is not None:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        qs = qs.filter(sop_instance_uid=sop_uid)
    rows = list(qs.order_by("series__series_number", "series_id", "instance_number", "pk"))
    if not rows:
        raise Http404("No such instance" if sop_uid else "No such series" if series_uid else "No such study")
    return rows


def audit_study_read(request: Request, action: str, study: Study, **detail: Any) -> None:
    """The audit event of a read of one study's data (PHI)."""
    audit.record(
        action,
        request=request._request,
        actor=request.user,
        institution=study.institution_id,
        object_type="archive.study",
        object_id=study.pk,
        patient_id=study.patient.patient_id,
        detail={
            "study_instance_uid": study.study_instance_uid,
            **({"as_prior": True} if seen_as_prior(request.user, study) else {}),
            **detail,
        },
    )
    note_study_read(study.pk)  # the lifecycle's "last read", and a recall if it left the online tier


# QIDO-RS ----------------------------------------------------------------------------


def _qido_query(request: Request, level: str) -> tuple[q.Query, list[str], list[str]]:
    """Parse QIDO query parameters (PS3.18 §8.3.4): keys, includefield, paging, fuzzy matching."""
    query = q.Query(level=level)
    include: list[str] = []
    warnings: list[str] = []
    for name, values in request.query_params.lists():
        lowered = name.lower()
        if lowered == "includefield":
            for value in values:
                include.extend(v.strip() for v in value.split(",") if v.strip())
            continue
        value = values[-1]
        if lowered in ("limit", "offset"):
            try:
                number = int(value)
                if number < 0:
                    raise ValueError
            except ValueError:
                raise q.QueryError(f"{name} must be a whole number, not {value!r}") from None
            if lowered == "limit":
                query.limit = number or None
            else:
                query.offset = number
            continue
        if lowered == "fuzzymatching":
            query.fuzzy = value.lower() == "true"
            continue
        if "." in name:
            sequence, _, item = name.partition(".")
            attribute = q.attribute_for(sequence)
            key = q.REQUEST_KEYWORDS.get(item, item.upper())
            if attribute is not None and attribute.keyword == "RequestAttributesSequence" and key in q.REQUEST_KEYS:
                query.request_keys[key] = value
                continue
            warnings.append(f'299 cloud-pacs "the matching key {name} is not supported and was ignored"')
            continue
        attribute = q.attribute_for(name)
        if attribute is None or attribute.kind == "none":
            warnings.append(f'299 cloud-pacs "the matching key {name} is not supported and was ignored"')
            continue
        query.keys[attribute.tag] = value
    return query, include, warnings


def _return_tags(level: str, include: list[str], query: q.Query, scope_levels: list[str]) -> list[str]:
    tags: list[str] = []
    for lvl in scope_levels:
        tags.extend(q.BY_KEYWORD[k].tag for k in q.DEFAULT_RETURN[lvl])
    tags.extend(tag for tag in query.keys if tag not in tags)
    if any(item.lower() == "all" for item in include):
        for lvl in q.LEVELS[: q.LEVELS.index(level) + 1]:
            tags.extend(q.BY_KEYWORD[k].tag for k in q.DEFAULT_RETURN[lvl] if q.BY_KEYWORD[k].tag not in tags)
    for item in include:
        if item.lower() == "all":
            continue
        attribute = q.attribute_for(item)
        found = attribute.tag if attribute is not None else _tag_of(item)
        if found is None:
            continue
        tag = found
        if tag not in tags:
            tags.append(tag)
    return tags


def _tag_of(item: str) -> str | None:
    from pydicom.datadict import tag_for_keyword

    if len(item) == 8 and all(c in "0123456789abcdefABCDEF" for c in item):
        return item.upper()
    tag = tag_for_keyword(item)
    return f"{tag:08X}" if tag is not None else None


def _qido(request: Request, level: str, study_uid: str | None = None, series_uid: str | None = None) -> HttpResponse:
    wanted = parse_accept(request.headers.get("Accept", ""))
    if wanted and not any(a.media_type in (DICOM_JSON, "application/json", "*/*", "application/*") for a in wanted):
        return _problem(406, "QIDO-RS answers in application/dicom+json only")
    try:
        query, include, warnings = _qido_query(request, level)
    except q.QueryError as exc:
        return _problem(400, str(exc))
    studies = searchable_studies(request.user)
    scope_levels = [level]
    if study_uid is not None:
        study = _study(request, study_uid)
        studies = studies.filter(pk=study.pk)
        if series_uid is not None:
            query.keys[q.BY_KEYWORD["SeriesInstanceUID"].tag] = series_uid
    elif level != q.STUDY:
        scope_levels = list(q.LEVELS[: q.LEVELS.index(level) + 1])  # unscoped: say which study and series
    if study_uid is not None and level == q.INSTANCE and series_uid is None:
        scope_levels = [q.SERIES, q.INSTANCE]
    maximum = settings.QUERY_MAX_RESULTS
    if query.limit and query.limit > maximum:
        warnings.append(f'299 cloud-pacs "limit {query.limit} is more than the {maximum} allowed; {maximum} used"')
    try:
        rows, more = q.search(query, studies, maximum=maximum)
    except q.QueryError as exc:
        return _problem(400, str(exc))
    if more:
        warnings.append('299 cloud-pacs "there are more results than returned; use offset to page"')
    ctx = q.Context(base_url=dicomweb_base())
    tags = _return_tags(level, include, query, scope_levels)
    build = q.answer_builder(level, tags, ctx)
    body = [build(row) for row in rows]
    audit.record(
        "archive.dicomweb.search",
        request=request._request,
        actor=request.user,
        object_type="archive.query",
        object_id=level.lower(),
        detail={
            "level": level,
            "keys": {q.BY_TAG[t].keyword: v for t, v in query.keys.items()},
            "study_instance_uid": study_uid or "",
            "results": len(rows),
            "studies": sorted({str(q._owner(row, q.STUDY).pk) for row in rows})[:100],
        },
    )
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return _json_response(body, headers=headers)


class StudiesView(DicomWebView):
    """``/dicomweb/studies``: QIDO-RS search for studies (GET), STOW-RS (POST)."""

    def get(self, request: Request) -> HttpResponse:
        return _qido(request, q.STUDY)

    def post(self, request: Request) -> HttpResponse:
        return _stow(request, None)


class SeriesSearchView(DicomWebView):
    def get(self, request: Request, study_uid: str | None = None) -> HttpResponse:
        return _qido(request, q.SERIES, study_uid)


class InstanceSearchView(DicomWebView):
    def get(self, request: Request, study_uid: str | None = None, series_uid: str | None = None) -> HttpResponse:
        if study_uid is not None and series_uid is not None:
            _series(_study(request, study_uid), series_uid)
        return _qido(request, q.INSTANCE, study_uid, series_uid)


# STOW-RS ----------------------------------------------------------------------------


def _store_institution(request: Request) -> Institution:
    """The institution a STOW stores for: the session's current one, or the caller's only one."""
    allowed = access.institution_ids(request.user, STORE_ROLES)
    chosen = request.query_params.get("institution")
    if chosen:
        # Named: that one or none, whatever the session's current institution is.
        try:
            return access.access_institution(request.user, chosen, *STORE_ROLES)
        except Http404:
            raise PermissionError(
                f"you cannot store images for institution {chosen[:40]!r}: it is not one where you hold "
                "the technologist or radiologist role"
            ) from None
    current = current_institution(request._request) if hasattr(request._request, "session") else None
    if current is not None and current.pk in allowed:
        return current
    if len(allowed) == 1:
        return Institution.objects.get(pk=next(iter(allowed)))
    if not allowed:
        raise PermissionError("storing images needs the technologist or radiologist role")
    raise LookupError("you store for several institutions: name one with the 'institution' query parameter")


_NEW_KEY = "new storage key"


def _failed_item(sop_class: str, sop_uid: str, code: str, reason: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081197": {"vr": "US", "Value": [FAILURE_REASONS.get(code, 0xC000)]},
        # Error Comment: the reason in words, for the person who sent it.
        "00000902": {"vr": "LO", "Value": [reason[:64]]},
    }
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    return dict(sorted(item.items()))


# Instances of one STOW-RS request indexed per transaction, and the longest a
# batch stays open while the body is still arriving.
STOW_BATCH = 32
STOW_BATCH_SECONDS = 0.25


def _stow(request: Request, study_uid: str | None) -> HttpResponse:
    """Store the parts of a multipart/related body; answer per instance (PS3.18 §10.5)."""
    media_type, params = parse_media_type(request.headers.get("Content-Type", ""))
    part_type = params.get("type", "").strip('"').lower()
    if media_type != "multipart/related":
        return _problem(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    if part_type and part_type != "application/dicom":
        return _problem(415, f"only application/dicom parts are accepted, not {part_type}")
    try:
        institution = _store_institution(request)
    except PermissionError as exc:
        return _problem(403, str(exc))
    except LookupError as exc:
        return _problem(400, str(exc))
    base = dicomweb_base()
    session = IngestSession(
        Source("stow", request.user.get_username(), actor=request.user, address=audit.client_address(request._request))
    )
    folder = Path(settings.DATA_DIR) / "incoming"
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    reader = iter(PartReader(request._request, params.get("boundary", ""), folder))
    unreadable: MultipartError | None = None
    finished = False
    while not finished:
        # Group commit: the index rows of several instances in one transaction.
        # Nothing is answered before the commit; a batch that cannot be
        # committed is reported failed, instance by instance.
        first = len(stored)
        try:
            with transaction.atomic():
                started = time.monotonic()
                finished = True
                try:
                    for count, part in enumerate(reader, start=1):
                        _store_part(part, institution, session, study_uid, base, stored, failed, studies, folder)
                        if count >= STOW_BATCH or time.monotonic() - started > STOW_BATCH_SECONDS:
                            finished = False
                            break
                except MultipartError as exc:
                    unreadable = exc
        except DatabaseError as exc:
            log.exception("a STOW-RS batch could not be indexed")
            reason = f"the index could not be written: {type(exc).__name__}"
            for item in stored[first:]:
                sop_class, sop_uid = item["00081150"]["Value"][0], item["00081155"]["Value"][0]
                failed.append(_failed_item(sop_class, sop_uid, "storage", reason))
                if item.get(_NEW_KEY):
                    session.unindexed.append(item[_NEW_KEY])
            del stored[first:]
            discard_unindexed(session)  # their rows were rolled back: so are their objects
            finished = False  # the parts after it get a batch of their own
        for item in stored[first:]:
            item.pop(_NEW_KEY, None)
    if unreadable is not None:
        if not stored and not failed:
            return _problem(400, f"the multipart body cannot be read: {unreadable}")
        failed.append(_failed_item("", "", "bad_part", str(unreadable)))
    if not stored and not failed:
        return _problem(400, "the request holds no part to store")
    body: dict[str, Any] = {}
    if len(studies) == 1 or study_uid:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid or next(iter(studies))}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else (202 if stored else 409)
    return _json_response(dict(sorted(body.items())), status=status)


def _store_part(
    part: Any,
    institution: Institution,
    session: IngestSession,
    study_uid: str | None,
    base: str,
    stored: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    studies: set[str],
    folder: Path,
) -> None:
    try:
        if part.error:
            failed.append(_failed_item("", "", "bad_part", part.error))
            return
        media_type, part_params = parse_media_type(part.content_type or "application/dicom")
        if media_type != "application/dicom":
            failed.append(_failed_item("", "", "unsupported_media", f"a part of type {media_type} is not stored"))
            return
        # Each part in a savepoint of the batch's transaction: a part that fails
        # in the database takes only its own rows with it (a refusal keeps
        # what it recorded, such as a conflict kept aside for review).
        savepoint = transaction.savepoint()
        try:
            if part.data is not None:
                result = store_part10(
                    part.data, institution=institution, session=session, only_study=study_uid, spill_folder=folder
                )
            else:
                result = store_instance(part.path, institution=institution, session=session, only_study=study_uid)
        except Exception as exc:
            if isinstance(exc, IngestError):
                transaction.savepoint_commit(savepoint)
            else:
                transaction.savepoint_rollback(savepoint)
            refused = refusal(exc)
            discard_unindexed(session)
            failed.append(_failed_item(refused.sop_class_uid, refused.sop_instance_uid, refused.code, refused.reason))
            return
        transaction.savepoint_commit(savepoint)
        instance = result.instance
        study_uid, series_uid = result.study_instance_uid, result.series_instance_uid
        studies.add(study_uid)
        url = f"{base}/studies/{study_uid}/series/{series_uid}"
        stored.append(
            {
                "00081150": {"vr": "UI", "Value": [instance.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [instance.sop_instance_uid]},
                "00081190": {"vr": "UR", "Value": [f"{url}/instances/{instance.sop_instance_uid}"]},
                # (Taken out before answering: the object to remove if the batch is rolled back.)
                _NEW_KEY: instance.storage_key if result.created else "",
            }
        )
    finally:
        if part.path is not None:
            Path(part.path).unlink(missing_ok=True)


class StudyView(DicomWebView):
    """``/dicomweb/studies/{study}``: WADO-RS study retrieval (GET), STOW-RS into the study (POST)."""

    def get(self, request: Request, study_uid: str) -> HttpResponseBase:
        found = _study(request, study_uid)
        return _retrieve(request, found, _instances(found), scope="study")

    def post(self, request: Request, study_uid: str) -> HttpResponse:
        return _stow(request, study_uid)


class SeriesView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponseBase:
        found = _study(request, study_uid)
        return _retrieve(request, found, _instances(found, series_uid), scope="series", series=series_uid)


class InstanceView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str, instance_uid: str) -> HttpResponseBase:
        found = _study(request, study_uid)
        rows = _instances(found, series_uid, instance_uid)
        return _retrieve(request, found, rows, scope="instance", series=series_uid, single=True)


# WADO-RS: retrieving objects ---------------------------------------------------------


@dataclass
class _Choice:
    media_type: str  # multipart/related or application/dicom
    syntax: str  # "*" or a transfer syntax UID


def _choose_dicom_syntax(wanted: list[Acceptable], single: bool) -> list[_Choice] | None:
    """Acceptable (media type, transfer syntax) pairs for DICOM objects, best first; None: not acceptable."""
    choices = []
    for item in wanted or [Acceptable("multipart/related", "application/dicom", "", 1.0)]:
        if item.quality <= 0:
            continue
        if item.media_type == "multipart/related" and item.part_type in ("application/dicom", ""):
            choices.append(_Choice("multipart/related", item.transfer_syntax or ExplicitVRLittleEndian))
        elif item.media_type == "application/dicom" and single:
            choices.append(_Choice("application/dicom", item.transfer_syntax or ExplicitVRLittleEndian))
        elif item.media_type in ("*/*", "multipart/*"):
            choices.append(_Choice("multipart/related", item.transfer_syntax or "*"))
    return choices or None


def _syntax_for(instance: Instance, choices: list[_Choice]) -> str | None:
    """The transfer syntax to send ``instance`` in, or None if nothing acceptable can be produced."""
    for choice in choices:
        if choice.syntax in ("*", instance.transfer_syntax_uid):
            return instance.transfer_syntax_uid
        if choice.syntax in retrieve.NATIVE and retrieve.can_decode(instance.transfer_syntax_uid):
            return choice.syntax
    return None


def _retrieve(
    request: Request,
    study: Study,
    rows: list[Instance],
    *,
    scope: str,
    series: str = "",
    single: bool = False,
) -> HttpResponseBase:
    choices = _choose_dicom_syntax(parse_accept(request.headers.get("Accept", "")), single)
    if choices is None:
        return _problem(406, 'WADO-RS sends objects as multipart/related; type="application/dicom"')
    plan = []
    for instance in rows:
        syntax = _syntax_for(instance, choices)
        if syntax is None:
            return _problem(
                406,
                f"instance {instance.sop_instance_uid} is stored as {instance.transfer_syntax_uid} and cannot "
                "be converted to the transfer syntax asked for; ask with transfer-syntax=*",
            )
        plan.append((instance, syntax))
    if (waiting := _not_restored(request, study, rows)) is not None:
        return waiting
    audit_study_read(
        request, "archive.study.retrieve", study, scope=scope, series_instance_uid=series, instances=len(rows)
    )
    overrides = dict(study.header_overrides or {})
    if choices[0].media_type == "application/dicom":
        instance, syntax = plan[0]
        if syntax != instance.transfer_syntax_uid or overrides:
            # Converted before the answer starts: a conversion that fails is a
            # clean refusal, not a 200 whose body stops.
            try:
                converted = _converted(instance, syntax, overrides)
            except Exception as exc:
                log.warning("could not convert %s to %s", instance.sop_instance_uid, syntax, exc_info=True)
                return _problem(
                    406, f"instance {instance.sop_instance_uid} cannot be converted to {syntax}: {exc}"[:300]
                )
            response: HttpResponseBase = HttpResponse(converted)
        else:
            response = _streaming(request, lambda: retrieve.iter_object(instance))
        response["Content-Type"] = f"application/dicom; transfer-syntax={syntax}"
        return response
    boundary = new_boundary()
    if isinstance(request._request, ASGIRequest):
        response = StreamingHttpResponse(_stream_parts(plan, boundary, overrides))
    else:
        response = StreamingHttpResponse(_parts(plan, boundary, overrides))
    response["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return response


def _converted(instance: Instance, syntax: str, overrides: dict[str, str]) -> bytes:
    return b"".join(retrieve.as_part10(instance, transfer_syntax=syntax, overrides=overrides))


def _prepared_part(instance: Instance, syntax: str, overrides: dict[str, str]) -> tuple[str, Iterator[bytes]] | None:
    """One part's transfer syntax and bytes, decided before its header is sent.

    An object that cannot be converted goes out as stored (its part says in
    which transfer syntax, PS3.18 8.7.3.5.2), with its corrections if it has
    any; one that cannot be read at all is left out rather than breaking the
    response in the middle.
    """
    if syntax == instance.transfer_syntax_uid and not overrides:
        return syntax, retrieve.iter_object(instance)
    try:
        return syntax, iter([_converted(instance, syntax, overrides)])
    except Exception:
        log.warning(
            "could not convert %s to %s; sending it as stored", instance.sop_instance_uid, syntax, exc_info=True
        )
    stored = instance.transfer_syntax_uid
    if not overrides:
        return stored, retrieve.iter_object(instance)
    try:
        return stored, iter([_converted(instance, stored, overrides)])
    except Exception:
        log.exception("could not read %s; it is left out of the retrieval", instance.sop_instance_uid)
        return None


def _parts(plan: list[tuple[Instance, str]], boundary: str, overrides: dict[str, str]) -> Iterator[bytes]:
    for instance, syntax in plan:
        prepared = _prepared_part(instance, syntax, overrides)
        if prepared is None:
            continue
        used, chunks = prepared
        yield _part_header(boundary, f"application/dicom; transfer-syntax={used}")
        yield from chunks
        yield b"\r\n"
    yield closing(boundary)


async def _stream_parts(
    plan: list[tuple[Instance, str]], boundary: str, overrides: dict[str, str]
) -> AsyncIterator[bytes]:
    """The multipart body, produced in the event loop from local files.

    An object that goes out as it was received and is on local disk is read
    right here (page-cache reads of a megabyte take a fraction of a
    millisecond); anything else (S3, a conversion, a correction) is produced
    in a worker thread. Memory stays bounded to a few chunks.
    """
    storage = get_storage()
    pending = b""
    loop = asyncio.get_running_loop()
    for instance, syntax in plan:
        path = (
            storage.local_path(instance.storage_key)
            if syntax == instance.transfer_syntax_uid and not overrides
            else None
        )
        if path is not None:
            pending += _part_header(boundary, f"application/dicom; transfer-syntax={syntax}")
            with open(path, "rb") as handle:
                first = handle.read(CHUNK - len(pending))
                yield pending + first
                pending = b""
                while chunk := handle.read(CHUNK):
                    yield chunk
        else:
            prepared = await loop.run_in_executor(None, _prepared_part, instance, syntax, overrides)
            if prepared is None:
                continue
            used, chunks = prepared
            pending += _part_header(boundary, f"application/dicom; transfer-syntax={used}")
            async for chunk in _threaded(lambda chunks=chunks: chunks):  # type: ignore[misc]
                if pending:
                    chunk, pending = pending + chunk, b""
                yield chunk
        pending += b"\r\n"
    yield pending + closing(boundary)


def _streaming(request: Request, parts: Callable[[], Iterator[bytes]]) -> StreamingHttpResponse:
    """A streamed response; under ASGI the chunks are produced off the event loop."""
    if isinstance(request._request, ASGIRequest):
        return StreamingHttpResponse(_threaded(parts))
    return StreamingHttpResponse(parts())


async def _threaded(parts: Callable[[], Iterator[bytes]]) -> AsyncIterator[bytes]:
    # Storage reads (S3) and decoding block: run the producer in a thread and
    # hand chunks over, a few at a time, so memory stays bounded.
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)
    loop = asyncio.get_running_loop()

    def produce() -> None:
        try:
            for chunk in _coalesce(parts()):
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
        except BaseException as exc:  # handed to the consumer, which re-raises
            asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()
            return
        asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    producer = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if not producer.done():
            # The client went away: drain so the producer thread can finish.
            while not producer.done():
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)


def _coalesce(chunks: Iterator[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """Join small chunks (part headers, small objects) into writes of about ``size`` bytes."""
    pending: list[bytes] = []
    length = 0
    for chunk in chunks:
        if len(chunk) >= size and not pending:
            yield chunk
            continue
        pending.append(chunk)
        length += len(chunk)
        if length >= size:
            yield b"".join(pending)
            pending, length = [], 0
    if pending:
        yield b"".join(pending)


# WADO-RS: metadata, frames, bulk data ------------------------------------------------


def _instance_url(base: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def _fill_bulk_uris(element_map: dict[str, Any], url: str, path: str = "") -> None:
    for tag, element in element_map.items():
        if not isinstance(element, dict):
            continue
        if "BulkDataURI" in element:
            element["BulkDataURI"] = f"{url}/bulk/{path}{tag}"
        elif element.get("vr") == "SQ":
            for index, item in enumerate(element.get("Value", []) or []):
                if isinstance(item, dict):
                    _fill_bulk_uris(item, url, f"{path}{tag}/{index}/")


def _metadata(request: Request, study: Study, rows: list[Instance], scope: str) -> HttpResponse:
    wanted = parse_accept(request.headers.get("Accept", ""))
    if wanted and not any(a.media_type in (DICOM_JSON, "application/json", "*/*", "application/*") for a in wanted):
        return _problem(406, "metadata is available as application/dicom+json")
    base = dicomweb_base()
    metadata = dict(Instance.objects.filter(pk__in=[r.pk for r in rows]).values_list("pk", "metadata"))
    overrides = study.header_overrides or {}
    body = []
    for row in rows:
        row.metadata = metadata.get(row.pk) or {}
        element_map = metadata_of(row)
        url = _instance_url(base, study.study_instance_uid, row.series.series_instance_uid, row.sop_instance_uid)
        _fill_bulk_uris(element_map, url)
        if overrides:
            q.apply_overrides(element_map, overrides)
        body.append(element_map)
    audit_study_read(request, "archive.study.metadata", study, scope=scope, instances=len(rows))
    return _json_response(body)


class StudyMetadataView(DicomWebView):
    def get(self, request: Request, study_uid: str) -> HttpResponse:
        found = _study(request, study_uid)
        return _metadata(request, found, _instances(found), "study")


class SeriesMetadataView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        found = _study(request, study_uid)
        return _metadata(request, found, _instances(found, series_uid), "series")


class InstanceMetadataView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str, instance_uid: str) -> HttpResponse:
        found = _study(request, study_uid)
        return _metadata(request, found, _instances(found, series_uid, instance_uid), "instance")


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"frame numbers must be whole numbers separated by commas, not {text!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError("frame numbers start at 1")
    return numbers


class FramesView(DicomWebView):
    """``.../instances/{sop}/frames/{list}``: pixel data by frame (PS3.18 §10.4.1.1.3)."""

    def get(self, request: Request, study_uid: str, series_uid: str, instance_uid: str, frames: str) -> HttpResponse:
        found = _study(request, study_uid)
        row = _instances(found, series_uid, instance_uid)[0]
        try:
            numbers = _frame_numbers(frames)
        except ValueError as exc:
            return _problem(400, str(exc))
        if row.pixel_data_offset is None and row.rows is None:
            return _problem(404, "the instance has no pixel data")
        if (waiting := _not_restored(request, found, [row])) is not None:
            return waiting
        wanted = parse_accept(request.headers.get("Accept", "")) or [
            Acceptable("multipart/related", "application/octet-stream", "", 1.0)
        ]
        stored = row.transfer_syntax_uid
        native = stored in retrieve.NATIVE
        compressed_type = retrieve.FRAME_MEDIA_TYPES.get(stored, "application/octet-stream")
        decode = None
        for item in wanted:
            if item.media_type not in ("multipart/related", "*/*"):
                continue
            part_type = item.part_type or "application/octet-stream"
            if native and part_type in ("application/octet-stream", "*/*"):
                decode, part_media = True, "application/octet-stream"
                break
            if not native and item.transfer_syntax in ("*", stored):
                decode, part_media = False, part_type if part_type != "*/*" else compressed_type
                break
            if not native and part_type == compressed_type and not item.transfer_syntax:
                decode, part_media = False, compressed_type
                break
            if not native and part_type == "application/octet-stream" and retrieve.can_decode(stored):
                decode, part_media = True, "application/octet-stream"
                break
        if decode is None:
            return _problem(406, f"frames of this instance are available as {compressed_type} or decoded octet-stream")
        try:
            chunks = list(retrieve.frames(row, numbers, decode=decode))
        except IndexError as exc:
            return _problem(404, str(exc))
        except retrieve.CannotTranscode as exc:
            return _problem(406, str(exc))
        except Exception as exc:  # pixel data the codec or the reader cannot take: refused, not a server error
            log.warning("could not read frames of %s", instance_uid, exc_info=True)
            return _problem(
                406, f"the frames of this instance cannot be read as asked: {type(exc).__name__}: {exc}"[:300]
            )
        audit_study_read(request, "archive.study.frames", found, sop_instance_uid=instance_uid, frames=numbers[:50])
        boundary = new_boundary()
        url = _instance_url(dicomweb_base(), study_uid, series_uid, instance_uid)
        body = []
        for number, (data, syntax) in zip(numbers, chunks, strict=True):
            extra = {"Content-Location": f"{url}/frames/{number}"}
            body += [_part_header(boundary, f"{part_media}; transfer-syntax={syntax}", extra), data, b"\r\n"]
        body.append(closing(boundary))
        return HttpResponse(b"".join(body), content_type=f'multipart/related; type="{part_media}"; boundary={boundary}')


class BulkDataView(DicomWebView):
    """``.../instances/{sop}/bulk/{tag path}``: one bulk data element's value (the metadata's BulkDataURI)."""

    def get(self, request: Request, study_uid: str, series_uid: str, instance_uid: str, path: str) -> HttpResponse:
        found = _study(request, study_uid)
        row = _instances(found, series_uid, instance_uid)[0]
        parts_of_path = [p for p in path.split("/") if p]
        if not parts_of_path or len(parts_of_path) % 2 == 0:
            raise Http404("No such bulk data")
        if (waiting := _not_restored(request, found, [row])) is not None:
            return waiting
        try:
            value = retrieve.bulk_value(row, parts_of_path)
        except KeyError:
            raise Http404("No such bulk data") from None
        audit_study_read(request, "archive.study.bulkdata", found, sop_instance_uid=instance_uid, path=path)
        boundary = new_boundary()
        body = _part_header(boundary, "application/octet-stream") + value + b"\r\n" + closing(boundary)
        return HttpResponse(
            body, content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}'
        )
