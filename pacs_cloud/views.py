"""Sign-in, home pages, the institution switcher, tokens and health."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import access, audit, push
from .authentication import issue_token
from .tenancy import SESSION_KEY


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "pacs_cloud/home.html")


@login_required
@require_POST
def switch_institution(request: HttpRequest) -> HttpResponse:
    institution = access.access_institution(request.user, request.POST.get("institution", ""))
    request.session[SESSION_KEY] = str(institution.pk)
    return redirect("home")


class TokenView(APIView):
    """Exchange a username and password for a bearer token."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=inline_serializer(
            "TokenRequest", {"username": serializers.CharField(), "password": serializers.CharField()}
        ),
        responses={
            201: inline_serializer(
                "TokenResponse",
                {
                    "token": serializers.CharField(),
                    "expires_at": serializers.DateTimeField(),
                    "id": serializers.UUIDField(),
                },
            )
        },
    )
    def post(self, request: Request) -> Response:
        username = str(request.data.get("username", ""))
        password = str(request.data.get("password", ""))
        user = authenticate(request._request, username=username, password=password)
        if user is None:
            audit.record("auth.token.refused", request=request._request, actor_label=username, outcome="denied")
            return Response({"detail": "Invalid credentials or account locked."}, status=status.HTTP_401_UNAUTHORIZED)
        token, key = issue_token(user, name=str(request.data.get("name", "api")))
        audit.record(
            "auth.token.issued", request=request._request, actor=user, object_type="api_token", object_id=token.pk
        )
        return Response({"id": token.pk, "token": key, "expires_at": token.expires_at}, status=status.HTTP_201_CREATED)


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        result: dict[str, Any] = {"status": "ok", **(detail or {})}
    except Exception as exc:  # health reports any failure rather than raising
        result = {"status": "error", "error": str(exc)[:200]}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"vendor": connection.vendor}


def _storage() -> dict[str, Any]:
    from django.utils.module_loading import import_string

    probe = import_string(settings.HEALTH_STORAGE_PROBE) if getattr(settings, "HEALTH_STORAGE_PROBE", "") else None
    if probe is None:
        return {"url": settings.STORAGE_URL.split("?")[0]}
    return probe()


def _broker() -> dict[str, Any]:
    from .celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return {"url": settings.CELERY_BROKER_URL.split("@")[-1]}


def _channel_layer() -> dict[str, Any]:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    async_to_sync(layer.send)("healthz.probe", {"type": "healthz"})
    async_to_sync(layer.flush)() if hasattr(layer, "flush") and not settings.REDIS_URL else None
    return {"backend": type(layer).__name__}


def healthz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": _timed(_database),
        "storage": _timed(_storage),
        "broker": _timed(_broker),
        "channel_layer": _timed(_channel_layer),
    }
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if healthy else "degraded",
        "role": settings.PACS_ROLE,
        "version": settings.PACS_VERSION,
        "checks": checks,
    }
    return JsonResponse(body, status=200 if healthy else 503)


@csrf_exempt
@require_POST
def push_relay(request: HttpRequest) -> HttpResponse:
    if not push.accept_relay(request.POST.get("token", "")):
        return HttpResponseBadRequest("bad relay token")
    return HttpResponse(status=204)
