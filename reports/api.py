"""REST API: ``/api/v1/reports/`` (``sign/``, ``verify/``, ``draft/``, ``addendum/``, ``pdf/``, ``fhir/``),
``/api/v1/report-templates/`` and ``/api/v1/critical-results/``.

Lists show only what the caller may see (``reports.access``); every read of
a report is audited.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from archive.access import access_study
from archive.query import name_words_q
from pacs_cloud import access as core_access
from pacs_cloud import audit
from pacs_cloud.lib.person_names import display_name
from pacs_cloud.models import Role, User

from . import actions, exports, signing
from .access import (
    access_critical_result,
    access_report,
    access_template,
    may_author,
    report_rules,
    template_institutions,
    visible_critical_results,
    visible_reports,
)
from .models import CriticalResult, Report, ReportTemplate, ReportVersion

LOOKUP_MAX = 200


class ReportTemplateSerializer(serializers.ModelSerializer):
    institution = serializers.UUIDField(source="institution_id")

    class Meta:
        model = ReportTemplate
        fields = [
            "id",
            "institution",
            "name",
            "modality",
            "procedure_code",
            "body_part",
            "sections",
            "macros",
            "is_active",
        ]
        read_only_fields = ["id"]
        # A template's rules, its unique name among them, are its write actions' (reports.actions).
        validators: list[Any] = []


class VersionSerializer(serializers.ModelSerializer):
    signer = serializers.CharField(source="signer_name")
    key_fingerprint = serializers.CharField(source="signing_key.fingerprint")

    class Meta:
        model = ReportVersion
        fields = [
            "number",
            "kind",
            "content",
            "key_images",
            "signer",
            "signed_at",
            "verification_code",
            "key_fingerprint",
            "canonical_sha256",
            "previous_sha256",
            "is_critical",
            "dicom_sop_instance_uid",
        ]


class ReportListSerializer(serializers.ModelSerializer):
    study = serializers.UUIDField(source="study_id")
    institution_name = serializers.CharField(source="institution.name")
    patient_display_name = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "state",
            "study",
            "institution",
            "institution_name",
            "patient_id",
            "patient_name",
            "patient_display_name",
            "accession_number",
            "study_date",
            "modality",
            "description",
            "is_critical",
            "signed_at",
            "url",
        ]

    def get_patient_display_name(self, obj: Report) -> str:
        return display_name(obj.patient_name)

    def get_url(self, obj: Report) -> str:
        return f"/reports/{obj.pk}/"


class ReportDetailSerializer(ReportListSerializer):
    author = serializers.CharField(source="author.get_username")
    versions = serializers.SerializerMethodField()
    draft = serializers.SerializerMethodField()
    viewer_url = serializers.SerializerMethodField()

    class Meta(ReportListSerializer.Meta):
        fields = [
            *ReportListSerializer.Meta.fields,
            "author",
            "reading_task",
            "template",
            "draft_kind",
            "draft_revision",
            "draft_saved_at",
            "draft",
            "versions",
            "viewer_url",
        ]

    def get_versions(self, obj: Report) -> list[dict[str, Any]]:
        rows = obj.versions.select_related("signing_key").order_by("number")
        return list(VersionSerializer(rows, many=True).data)

    def get_draft(self, obj: Report) -> dict[str, Any] | None:
        # The draft is the writers' working copy; readers see signed versions only.
        return obj.draft if self.context.get("writer") else None

    def get_viewer_url(self, obj: Report) -> str:
        return f"/viewer/studies/{obj.study_id}/"


class CreateReportSerializer(serializers.Serializer):
    study = serializers.UUIDField()
    template = serializers.UUIDField(required=False, allow_null=True)


class DraftSerializer(serializers.Serializer):
    content = serializers.JSONField()
    base_revision = serializers.IntegerField(required=False, allow_null=True, min_value=0)


class SignSerializer(serializers.Serializer):
    password = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        help_text=(
            "The signer's password, asked again. A correct one opens a signing window for this token "
            "(or browser session) of REPORTS_SIGN_WINDOW_SECONDS, in which it may be left out; "
            "outside one, leaving it out is refused with code password_required."
        ),
    )
    preliminary = serializers.BooleanField(default=False)
    base_revision = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    critical = serializers.BooleanField(default=False)
    critical_note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    notify = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="Username of the clinician to notify of a critical result.",
    )


class SignedVersionSerializer(VersionSerializer):
    sign_window_until = serializers.SerializerMethodField(
        help_text="Until when this token (or session) signs without the password; null: no window."
    )

    class Meta(VersionSerializer.Meta):
        fields = [*VersionSerializer.Meta.fields, "sign_window_until"]

    def get_sign_window_until(self, obj: ReportVersion) -> dt.datetime | None:
        return self.context.get("sign_window_until")


class SignWindowSerializer(serializers.Serializer):
    until = serializers.DateTimeField(allow_null=True)
    seconds_left = serializers.IntegerField()


def sign_window_state(request: Any) -> dict[str, Any]:
    """The caller's signing window (per token for the API, per session for the browser)."""
    until = signing.window_until(request, request.user)
    seconds = int((until - timezone.now()).total_seconds()) if until else 0
    return {"until": until, "seconds_left": max(seconds, 0)}


class AddendumSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["addendum", "amendment"])


class CriticalResultSerializer(serializers.ModelSerializer):
    report_url = serializers.SerializerMethodField()
    accession_number = serializers.CharField(source="report.accession_number")
    description = serializers.CharField(source="report.description")

    class Meta:
        model = CriticalResult
        fields = [
            "id",
            "report",
            "report_url",
            "accession_number",
            "description",
            "note",
            "created_at",
            "due_at",
            "acknowledged_at",
            "escalated_at",
        ]

    def get_report_url(self, obj: CriticalResult) -> str:
        return f"/reports/{obj.report_id}/"


def _refused(exc: actions.ReportRefused) -> Response:
    body: dict[str, Any] = {"detail": str(exc), "code": exc.code}
    if isinstance(exc, actions.DraftConflict):
        body["draft_revision"] = exc.report.draft_revision
        body["draft"] = exc.report.draft
    return Response(body, status=exc.status)


def _date(value: str | None, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValidationError({name: "a date as YYYY-MM-DD"}) from None


def lookup(user: Any, params: Any) -> QuerySet[Report]:
    """The clinicians' lookup: filters over the reports the caller may see, newest study first."""
    return filtered(visible_reports(user), params)


def filtered(qs: QuerySet[Report], params: Any) -> QuerySet[Report]:
    """``qs`` narrowed by the lookup's filters, newest study first."""
    if params.get("patient_id"):
        qs = qs.filter(patient_id=params["patient_id"].strip())
    if params.get("patient_name"):
        qs = qs.filter(name_words_q("patient_name_search", params["patient_name"]))
    if params.get("accession"):
        qs = qs.filter(accession_number=params["accession"].strip())
    date_from, date_to = _date(params.get("date_from"), "date_from"), _date(params.get("date_to"), "date_to")
    if date_from:
        qs = qs.filter(study_date__gte=date_from)
    if date_to:
        qs = qs.filter(study_date__lte=date_to)
    if params.get("modality"):
        qs = qs.filter(modality__contains=params["modality"].strip().upper())
    if params.get("status"):
        states = [s for s in params["status"].split(",") if s in Report.State.values]
        if not states:
            raise ValidationError({"status": f"one or more of {', '.join(Report.State.values)}"})
        qs = qs.filter(state__in=states)
    return qs.order_by("-study_date", "-created_at")


LOOKUP_PARAMETERS = [
    OpenApiParameter("patient_id", str),
    OpenApiParameter(
        "patient_name",
        str,
        description="Name words, each the start of a word of the name, in any script (张三, ZHANG SAN, 张三 (ZHANG, SAN))",
    ),
    OpenApiParameter("accession", str),
    OpenApiParameter("date_from", OpenApiTypes.DATE),
    OpenApiParameter("date_to", OpenApiTypes.DATE),
    OpenApiParameter("modality", str),
    OpenApiParameter("status", str, description="draft, preliminary, final, amended (comma-separated)"),
    OpenApiParameter("limit", int),
    OpenApiParameter("offset", int),
]


def _newest_first(report: Report) -> tuple[bool, dt.date, dt.datetime]:
    # PostgreSQL's DESC order: studies without a date first, then by date and creation.
    return (report.study_date is None, report.study_date or dt.date.min, report.created_at)


def search(user: Any, params: Any) -> tuple[list[Report], bool]:
    """One page of the lookup for ``user`` (shared by the API and the page), and whether more follow.

    The visible reports are read as disjoint parts (``report_rules``: the
    caller's own hospitals, the studies granted to them) and merged: each
    part walks its own index in date order and stops at the page's end,
    where one query with an OR of both would have to collect and sort every
    visible report first.
    """
    try:
        limit = max(1, min(int(params.get("limit", 50)), LOOKUP_MAX))
        offset = max(0, int(params.get("offset", 0)))
    except ValueError:
        raise ValidationError({"limit": "limit and offset are numbers"}) from None
    end = offset + limit + 1
    rows: list[Report] = []
    # The draft (the writers' working copy) is never listed: not read either.
    base = filtered(Report.objects.select_related("institution").defer("draft"), params)
    for rule in report_rules(user):
        rows += list(base.filter(rule)[:end])
    rows.sort(key=_newest_first, reverse=True)
    rows = rows[offset:end]
    return rows[:limit], len(rows) > limit


class ReportViewSet(viewsets.ViewSet):
    """Reports: the lookup, authoring (drafts with autosave), signing, verification and outputs."""

    def _writer(self, request: Request, report: Report) -> bool:
        return report.author_id == request.user.pk or may_author(request.user, report.study)

    def _detail(self, request: Request, report: Report) -> dict[str, Any]:
        return dict(ReportDetailSerializer(report, context={"writer": self._writer(request, report)}).data)

    @extend_schema(
        parameters=LOOKUP_PARAMETERS,
        responses={200: OpenApiTypes.OBJECT},
        tags=["reports"],
        operation_id="reports_lookup",
    )
    def list(self, request: Request) -> Response:
        rows, more = search(request.user, request.query_params)
        if rows:
            audit.record(
                "report.list",
                request=request,
                object_type="report",
                detail={"report_ids": [str(r.pk) for r in rows]},
            )
        return Response({"results": ReportListSerializer(rows, many=True).data, "more": more})

    @extend_schema(request=CreateReportSerializer, responses={201: ReportDetailSerializer}, tags=["reports"])
    def create(self, request: Request) -> Response:
        data = CreateReportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        study = access_study(request.user, pk=data.validated_data["study"])
        template = None
        if data.validated_data.get("template"):
            template = access_template(request.user, data.validated_data["template"])
        try:
            report, created = actions.do_create_report(
                study, acting_user=request.user, template=template, request=request
            )
        except actions.ReportRefused as exc:
            return _refused(exc)
        return Response(self._detail(request, report), status=status.HTTP_201_CREATED if created else 200)

    @extend_schema(responses={200: ReportDetailSerializer}, tags=["reports"])
    @audit.records_refusal("report.view_refused", object_type="report", key="pk")
    def retrieve(self, request: Request, pk: str) -> Response:
        report = access_report(request.user, pk)
        actions.do_record_view(request, report)
        return Response(self._detail(request, report))

    @extend_schema(request=DraftSerializer, responses={200: ReportDetailSerializer}, tags=["reports"])
    def partial_update(self, request: Request, pk: str) -> Response:
        """Edit the draft (the same as ``PUT draft/``); refused for a final report."""
        return self._save(request, pk)

    def _save(self, request: Request, pk: str) -> Response:
        report = access_report(request.user, pk)
        data = DraftSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            saved = actions.do_autosave_draft(
                report,
                acting_user=request.user,
                content=data.validated_data["content"],
                base_revision=data.validated_data.get("base_revision"),
                request=request,
            )
        except actions.ReportRefused as exc:
            return _refused(exc)
        return Response(
            {"id": str(saved.pk), "draft_revision": saved.draft_revision, "draft_saved_at": saved.draft_saved_at}
        )

    @extend_schema(methods=["GET"], responses={200: OpenApiTypes.OBJECT}, tags=["reports"])
    @extend_schema(methods=["PUT"], request=DraftSerializer, responses={200: OpenApiTypes.OBJECT}, tags=["reports"])
    @action(detail=True, methods=["get", "put"])
    def draft(self, request: Request, pk: str) -> Response:
        """The draft and its revision (to recover after a closed tab); PUT autosaves a new revision."""
        if request.method == "PUT":
            return self._save(request, pk)
        report = access_report(request.user, pk)
        if not self._writer(request, report):
            raise Http404("No such report")
        actions.do_record_view(request, report, "draft_view")
        return Response(
            {
                "id": str(report.pk),
                "state": report.state,
                "draft_kind": report.draft_kind,
                "draft_revision": report.draft_revision,
                "draft_saved_at": report.draft_saved_at,
                "draft": report.draft,
            }
        )

    @extend_schema(request=SignSerializer, responses={201: SignedVersionSerializer}, tags=["reports"])
    @action(detail=True, methods=["post"])
    @audit.records_refusal("report.sign_refused", object_type="report", key="pk")
    def sign(self, request: Request, pk: str) -> Response:
        """Sign the draft (or the open addendum): the password is asked again, unless a signing window is open.

        A bearer-token client's window belongs to its token: another token of
        the same user has none, and revoking the token ends it.
        """
        report = access_report(request.user, pk)
        data = SignSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        recipient = None
        if data.validated_data["notify"]:
            recipient = User.objects.filter(
                username=data.validated_data["notify"],
                memberships__institution_id=report.institution_id,
                memberships__role=Role.CLINICIAN,
                memberships__is_active=True,
            ).first()
            if recipient is None:
                raise ValidationError({"notify": "no clinician of the study's hospital has that username"})
        try:
            version = actions.do_sign_report(
                report,
                acting_user=request.user,
                password=data.validated_data["password"],
                request=request,
                preliminary=data.validated_data["preliminary"],
                base_revision=data.validated_data.get("base_revision"),
                critical=data.validated_data["critical"],
                critical_note=data.validated_data["critical_note"],
                recipient=recipient,
            )
        except actions.ReportRefused as exc:
            return _refused(exc)
        until = signing.window_until(request, request.user)
        body = SignedVersionSerializer(version, context={"sign_window_until": until}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: SignWindowSerializer}, tags=["reports"])
    @action(detail=False, methods=["get"], url_path="sign-window")
    def sign_window(self, request: Request) -> Response:
        """Until when the caller signs without re-entering the password (this token, or this browser session)."""
        return Response(SignWindowSerializer(sign_window_state(request)).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["reports"])
    @action(detail=True, methods=["get"])
    def verify(self, request: Request, pk: str) -> Response:
        """Check every signed version: the form rebuilt byte for byte, the Ed25519 signature, the chain."""
        report = access_report(request.user, pk)
        results = signing.verify_report(report)
        actions.do_record_view(request, report, "verify")
        return Response(
            {
                "id": str(report.pk),
                "valid": bool(results) and all(r.valid for r in results),
                "versions": [r.as_dict() for r in results],
            }
        )

    @extend_schema(request=AddendumSerializer, responses={200: ReportDetailSerializer}, tags=["reports"])
    @action(detail=True, methods=["post"])
    def addendum(self, request: Request, pk: str) -> Response:
        """Open an addendum or an amendment on a final report (signed later through ``sign/``)."""
        report = access_report(request.user, pk)
        data = AddendumSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            opened = actions.do_open_addendum(
                report, acting_user=request.user, kind=data.validated_data["kind"], request=request
            )
        except actions.ReportRefused as exc:
            return _refused(exc)
        return Response(self._detail(request, opened))

    def _version(self, request: Request, report: Report) -> ReportVersion:
        versions = report.versions.select_related(
            "signing_key", "signer", "report__study__patient", "report__institution"
        )
        number = request.query_params.get("version")
        row = versions.filter(number=int(number)).first() if number and number.isdigit() else versions.last()
        if row is None:
            raise Http404("This report has no signed version")
        return row

    @extend_schema(
        parameters=[OpenApiParameter("version", int)], responses={(200, "application/pdf"): bytes}, tags=["reports"]
    )
    @action(detail=True, methods=["get"])
    @audit.records_refusal("report.view_refused", object_type="report", key="pk")
    def pdf(self, request: Request, pk: str) -> HttpResponse:
        from .pdf import render_pdf

        report = access_report(request.user, pk)
        version = self._version(request, report)
        actions.do_record_view(request, report, "pdf")
        response = HttpResponse(render_pdf(version), content_type="application/pdf")
        response["Content-Disposition"] = (
            f'inline; filename="report-{report.accession_number or report.pk}-v{version.number}.pdf"'
        )
        return response

    @extend_schema(
        parameters=[OpenApiParameter("version", int)], responses={200: OpenApiTypes.OBJECT}, tags=["reports"]
    )
    @action(detail=True, methods=["get"])
    def fhir(self, request: Request, pk: str) -> Response:
        """The version as a FHIR R4 DiagnosticReport."""
        report = access_report(request.user, pk)
        version = self._version(request, report)
        actions.do_record_view(request, report, "fhir")
        body = exports.diagnostic_report(version, base_url=request.build_absolute_uri("/").rstrip("/"))
        return Response(body, content_type="application/fhir+json")

    @extend_schema(
        parameters=[OpenApiParameter("code", str, required=True)],
        responses={200: OpenApiTypes.OBJECT},
        tags=["reports"],
    )
    @action(detail=False, methods=["get"], url_path="verify-code")
    def verify_code(self, request: Request) -> Response:
        """Find and check the version a printed verification code names (only reports the caller may see)."""
        code = (request.query_params.get("code") or "").strip().upper()
        version = (
            ReportVersion.objects.filter(verification_code=code, report__in=visible_reports(request.user))
            .select_related("report__study__patient", "signing_key", "signer")
            .first()
        )
        if version is None:
            raise Http404("No report carries that code")
        previous = version.report.versions.filter(number=version.number - 1).first()
        result = signing.verify(version, previous=previous)
        actions.do_record_view(request, version.report, "verify")
        return Response({"report": str(version.report_id), "url": f"/reports/{version.report_id}/", **result.as_dict()})


class ReportTemplateViewSet(viewsets.ModelViewSet):
    """Report templates of the hospitals the caller reads for; administrators and radiologists keep them."""

    serializer_class = ReportTemplateSerializer
    queryset = ReportTemplate.objects.none()  # the schema's model; get_queryset() decides what is seen
    http_method_names = ["get", "post", "patch", "delete"]

    def get_queryset(self) -> QuerySet[ReportTemplate]:
        qs = ReportTemplate.objects.filter(institution_id__in=template_institutions(self.request.user))
        study = self.request.query_params.get("study")
        if study:
            found = access_study(self.request.user, pk=study)
            ids = [t.pk for t in actions.templates_for(found)]
            qs = qs.filter(pk__in=ids)
        return qs.order_by("name")

    def _check(self, institution_id: Any) -> None:
        """404 alike for a missing institution and one where the caller keeps no templates."""
        core_access.access_institution(self.request.user, institution_id, Role.RADIOLOGIST, Role.INSTITUTION_ADMIN)

    def _act(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a template action as the caller; its refusals answer 400."""
        try:
            return action(*args, acting_user=self.request.user, request=self.request, **kwargs)
        except actions.ReportRefused as exc:
            raise ValidationError({"detail": str(exc)}) from None

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        institution_id = data.pop("institution_id")
        self._check(institution_id)
        serializer.instance = self._act(actions.do_create_report_template, institution_id, **data)

    def perform_update(self, serializer: Any) -> None:
        self._check(serializer.instance.institution_id)
        if "institution_id" in serializer.validated_data:
            self._check(serializer.validated_data["institution_id"])
        serializer.instance = self._act(
            actions.do_change_report_template, serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: ReportTemplate) -> None:
        self._check(instance.institution_id)
        self._act(actions.do_deactivate_report_template, instance)

    def get_object(self) -> ReportTemplate:
        return access_template(self.request.user, self.kwargs["pk"])


class CriticalResultViewSet(viewsets.ViewSet):
    """Critical results addressed to the caller (or their hospital's clinicians; coordinators once escalated)."""

    @extend_schema(
        parameters=[OpenApiParameter("open", bool)],
        responses={200: CriticalResultSerializer(many=True)},
        tags=["reports"],
    )
    def list(self, request: Request) -> Response:
        qs = visible_critical_results(request.user).select_related("report")
        if request.query_params.get("open") in ("1", "true"):
            qs = qs.filter(acknowledged_at__isnull=True)
        rows = list(qs[:100])
        if rows:
            audit.record(
                "report.critical.list",
                request=request,
                object_type="critical_result",
                detail={"ids": [str(r.pk) for r in rows]},
            )
        return Response({"results": CriticalResultSerializer(rows, many=True).data})

    @extend_schema(responses={200: CriticalResultSerializer}, tags=["reports"])
    def retrieve(self, request: Request, pk: str) -> Response:
        row = access_critical_result(request.user, pk)
        audit.record(
            "report.critical.view",
            request=request,
            institution=row.institution_id,
            object_type="critical_result",
            object_id=row.pk,
            patient_id=row.report.patient_id,
        )
        return Response(CriticalResultSerializer(row).data)

    @extend_schema(request=None, responses={200: CriticalResultSerializer}, tags=["reports"])
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str) -> Response:
        row = access_critical_result(request.user, pk)
        done = actions.do_acknowledge_critical_result(row, acting_user=request.user, request=request)
        return Response(CriticalResultSerializer(done).data)
