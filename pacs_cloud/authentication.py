"""Bearer tokens for the REST API and DICOMweb (``Authorization: Bearer <token>``)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from . import authcache
from .models import ApiToken, User


def issue_token(user: User, *, name: str = "", ttl_hours: int | None = None) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret, which is shown only once."""
    key = secrets.token_urlsafe(32)
    hours = ttl_hours if ttl_hours is not None else settings.API_TOKEN_TTL_HOURS
    token = ApiToken.objects.create(
        user=user,
        key_hash=ApiToken.hash_key(key),
        prefix=key[:8],
        name=name,
        expires_at=timezone.now() + timedelta(hours=hours),
    )
    return token, key


def user_for_token(key: str) -> tuple[User, ApiToken]:
    """The active user a bearer token belongs to; raises AuthenticationFailed otherwise."""
    key_hash = ApiToken.hash_key(key)
    token = authcache.remembered(("token", key_hash), lambda: _load_token(key_hash))
    if token is None:
        raise exceptions.AuthenticationFailed("Invalid token.")
    if token.revoked_at is not None:
        raise exceptions.AuthenticationFailed("Token revoked.")
    now = timezone.now()
    if token.expires_at <= now:
        raise exceptions.AuthenticationFailed("Token expired.")
    if not token.user.is_active:
        raise exceptions.AuthenticationFailed("User inactive.")
    # Touch at most once a minute: a write per request would serialise reads.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return authcache.private_copy(token.user), token


def _load_token(key_hash: str) -> ApiToken | None:
    return ApiToken.objects.select_related("user").filter(key_hash=key_hash).first()


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed bearer token header.")
        try:
            key = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Malformed bearer token.") from None
        return user_for_token(key)

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class BasicAuthentication(authentication.BasicAuthentication):
    """HTTP Basic (DICOMweb clients that know only a user name and password).

    Django's ``authenticate`` gets the underlying ``HttpRequest``: the
    receivers of a failed sign-in (the lockout counter, the audit trail) read
    the request, and reading ``user`` on DRF's request while it authenticates
    would start authentication over again, without end.
    """

    def authenticate_credentials(self, userid: str, password: str, request: Any = None) -> tuple[User, None]:
        return super().authenticate_credentials(userid, password, getattr(request, "_request", request))


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes bearer tokens in the OpenAPI schema (drf-spectacular finds it by subclassing)."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A token from POST /api/v1/auth/token/"}


class BasicScheme(OpenApiAuthenticationExtension):
    """Describes HTTP Basic (our subclass) in the OpenAPI schema, as drf-spectacular does DRF's own."""

    target_class = BasicAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "basic"}
