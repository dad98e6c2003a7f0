"""Sign-in, home pages, the institution switcher, tokens and health."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.decorators import login_required
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

from . import access, audit, health, push
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


def healthz(request: HttpRequest) -> JsonResponse:
    """Status of every dependency; 503 when any of them fails (for load balancers)."""
    checks = health.run_checks()
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
