"""The walk: discover routes, build each institution's objects, request as every user, judge.

Kept free of pytest so the proof in ``test_harness_bites.py`` drives the same
code on a deliberately unsafe URL configuration.
"""

from __future__ import annotations

import html
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.signals import request_finished
from django.db import close_old_connections
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import URLResolver, get_resolver
from django.utils.regex_helper import normalize

from pacs_cloud.authentication import issue_token
from pacs_cloud.lib.uids import is_valid_uid, new_uid
from pacs_cloud.models import Role, User

from .registry import Const, Form, Ref, Registry

ALL_METHODS = ["get", "post", "put", "patch", "delete"]
# What a request naming another institution's object may get back (and a
# redirect to the sign-in page, for a caller without credentials).
REFUSALS = frozenset({401, 403, 404, 405})
MAX_BODY = 4 * 1024 * 1024  # bytes of a response searched for secrets


# Routes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    template: str  # "/api/v1/memberships/{pk}/"
    params: tuple[str, ...]
    methods: tuple[str, ...]
    in_schema: bool


def _shape(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", template)


def _patterns(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        regex = pattern.pattern.regex.pattern
        regex = regex[1:] if regex.startswith("^") else regex
        if isinstance(pattern, URLResolver):
            yield from _patterns(pattern.url_patterns, prefix + regex)
        else:
            yield prefix + regex


@lru_cache(maxsize=8)
def schema_methods(urlconf: str | None) -> dict[str, tuple[str, ...]]:
    """OpenAPI path shape → its methods, from the drf-spectacular schema of ``urlconf``."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator(urlconf=urlconf).get_schema(request=None, public=True)
    return {
        _shape(path): tuple(m for m in ALL_METHODS if m in operations) for path, operations in schema["paths"].items()
    }


@lru_cache(maxsize=8)
def discover(urlconf: str | None = None) -> tuple[Route, ...]:
    """Every route of the URL resolver, with the schema's methods where it has them."""
    in_schema = schema_methods(urlconf)
    routes: dict[str, Route] = {}
    for regex in _patterns(get_resolver(urlconf).url_patterns):
        # normalize() is what reverse() uses; of optional variants take the fullest.
        fmt, params = max(normalize(regex), key=lambda p: (len(p[1]), len(p[0])))
        template = "/" + re.sub(r"%\((\w+)\)s", r"{\1}", fmt)
        methods = in_schema.get(_shape(template), tuple(ALL_METHODS))
        routes.setdefault(template, Route(template, tuple(params), methods, _shape(template) in in_schema))
    return tuple(routes.values())


# The world: every institution's objects ---------------------------------------------


@dataclass
class Party:
    """One institution of the walk, with what the factories made there."""

    key: str  # "a", "b" or "c"
    tenant: Any  # tests.conftest.Tenant
    values: dict[str, str]
    secrets: list[str]


def build_world(tenants: Any, registry: Registry) -> dict[str, Party]:
    world = {}
    for key, tenant in zip("abc", tenants, strict=True):
        institution = tenant.institution
        tenant.made = {"institution.id": str(institution.pk), "institution.slug": institution.slug}
        secrets: list[str] = []
        for make in registry.factories:
            made = make(tenant)
            tenant.made.update({name: str(value) for name, value in made.values.items()})
            secrets.extend(made.secrets)
        world[key] = Party(key, tenant, dict(tenant.made), secrets)
    return world


def missing_value(value: str) -> str:
    """A value of the same shape as ``value`` that names nothing."""
    try:
        uuid.UUID(value)
        return str(uuid.uuid4())
    except ValueError:
        pass
    if is_valid_uid(value):
        return new_uid()
    if value.isdigit():
        return str(10**12 + 7)
    return f"{value}-missing"


# Requests --------------------------------------------------------------------------


@dataclass
class Attacker:
    label: str  # "b.radiologist", "platform" or "anonymous"
    user: User | None
    home: str | None  # the key of their institution
    role: str = ""

    def may_see(self, open_to: frozenset[str]) -> bool:
        return bool({self.label, self.role, "platform" if self.label == "platform" else ""} & open_to - {""})


def attackers(world: dict[str, Party], platform_admin: User) -> list[Attacker]:
    found = [
        Attacker(f"{key}.{role.value}", party.tenant.users[role.value], key, role.value)
        for key, party in world.items()
        for role in Role
    ]
    return [*found, Attacker("platform", platform_admin, None), Attacker("anonymous", None, None)]


def client_for(user: User | None) -> Client:
    """Signed in both ways a caller can be: a browser session and a bearer token."""
    client = Client(raise_request_exception=False)
    if user is not None:
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        _, key = issue_token(user, name="isolation-walk")
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@dataclass
class Answer:
    status: int
    data: bytes
    location: str = ""

    def refused(self, also_allowed: frozenset[int]) -> bool:
        if self.status in REFUSALS or self.status in also_allowed:
            return True
        return self.status in (301, 302, 303) and self.location.startswith(resolve_url(settings.LOGIN_URL))


async def _read_async(chunks: Any) -> bytes:
    data = b""
    try:
        async for chunk in chunks:
            data += chunk
            if len(data) > MAX_BODY:
                break
    finally:
        await chunks.aclose()
    return data


def ask(client: Client, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Answer:
    if method == "get":
        response = client.get(path, query or {})
    elif body is None:
        response = client.generic(method.upper(), path)
    elif isinstance(body, Form):
        response = client.generic(
            method.upper(), path, urlencode(body, doseq=True), content_type="application/x-www-form-urlencoded"
        )
    else:
        response = client.generic(method.upper(), path, json.dumps(body), content_type="application/json")
    if getattr(response, "streaming", False) and getattr(response, "is_async", False):
        # e.g. multipart rendered images; the test client closes the response when the stream ends
        data = async_to_sync(_read_async)(response.streaming_content)
    elif getattr(response, "streaming", False):
        data = b""
        for chunk in response.streaming_content:
            data += chunk
            if len(data) > MAX_BODY:
                break
        # As the test client does: closing fires request_finished, whose
        # close_old_connections would close the test's database connection.
        request_finished.disconnect(close_old_connections)
        try:
            response.close()
        finally:
            request_finished.connect(close_old_connections)
    else:
        data = response.content[:MAX_BODY]
    headers = "\n".join(f"{k}: {v}" for k, v in response.items()).encode()
    return Answer(response.status_code, data + b"\n" + headers, response.get("Location", ""))


def _forms(secret: str) -> list[bytes]:
    forms = {secret, html.escape(secret), json.dumps(secret)[1:-1]}
    return [f.encode() for f in forms if f]


def leaked(answer: Answer, secrets: list[tuple[str, str]]) -> list[str]:
    return [f"{owner}:{secret}" for owner, secret in secrets if any(f in answer.data for f in _forms(secret))]


# Judging -----------------------------------------------------------------------------


@dataclass
class Probe:
    shown: str  # the path with its query, for the report
    answer: Answer


@dataclass
class Violation:
    who: str
    method: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.who:<24} {self.method.upper():<6} {self.path}  {self.problem}"


def _fill_dict(spec: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    filled = {key: (_lookup(v, values) if isinstance(v, (Ref, Const)) else v) for key, v in spec.items()}
    return Form(filled) if isinstance(spec, Form) else filled


def _lookup(filler: Ref | Const, values: dict[str, str]) -> str:
    return filler.value if isinstance(filler, Const) else values[filler.name]


def _fill_path(route: Route, registry: Registry, values: dict[str, str]) -> str:
    path = route.template
    for name in route.params:
        filler = registry.filler(route.template, name)
        assert filler is not None  # coverage_problems() reports these first
        path = path.replace("{" + name + "}", _lookup(filler, values))
    return path


def _missing(values: dict[str, str]) -> dict[str, str]:
    return {name: missing_value(value) for name, value in values.items()}


@contextmanager
def quiet_request_log() -> Iterator[None]:
    """Thousands of expected 404s would bury the report."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def walk(routes: tuple[Route, ...], registry: Registry, world: dict[str, Party], attacker: Attacker) -> list[Violation]:
    """Every route and method as ``attacker`` against every institution they do not belong to."""
    victims = [party for key, party in world.items() if key != attacker.home]
    foreign = [(party.key, secret) for party in victims for secret in party.secrets]
    client = client_for(attacker.user)
    found: list[Violation] = []

    def judge(method: str, path: str, answer: Answer, extra: str = "") -> None:
        if answer.status >= 500:
            found.append(Violation(attacker.label, method, path, f"server error {answer.status}{extra}"))
        for secret in leaked(answer, foreign):
            found.append(Violation(attacker.label, method, path, f"shows {secret}{extra}"))

    def request(method: str, route: Route, body: Any, query: Any, values: dict[str, str]) -> Probe:
        path = _fill_path(route, registry, values)
        filled_query = _fill_dict(query, values) if query is not None else None
        answer = ask(client, method, path, _fill_dict(body, values) if body is not None else None, filled_query)
        return Probe(path + (f"?{urlencode(filled_query)}" if filled_query else ""), answer)

    with quiet_request_log():
        for route in routes:
            if registry.exemption(route.template):
                continue
            rule = registry.rule(route.template)
            open_to_me = attacker.may_see(rule.open_to)
            unfilled = [name for name in route.params if registry.filler(route.template, name) is None]
            if unfilled:
                found.append(Violation(attacker.label, "*", route.template, f"cannot fill {unfilled}: not walked"))
                continue
            for method in route.methods:
                probes: list[tuple[dict | None, dict | None]] = [(rule.bodies.get(method), None)]
                if method == "get":
                    probes += [(None, query) for query in rule.queries]
                for body_spec, query_spec in probes:
                    # A path or body naming another institution's object must be
                    # refused; a filter naming it may answer (an empty list), but
                    # only as it answers for an object that does not exist.
                    names_object = bool(route.params) or any(isinstance(v, Ref) for v in (body_spec or {}).values())
                    if not names_object and query_spec is None:
                        # It names nothing; still it must show nothing of another's.
                        judge(method, route.template, ask(client, method, route.template, body_spec))
                        continue
                    missing = _missing(victims[0].values)
                    baseline = request(method, route, body_spec, query_spec, missing)
                    judge(method, baseline.shown, baseline.answer, " (with ids that name nothing)")
                    for victim in victims:
                        probe = request(method, route, body_spec, query_spec, victim.values)
                        judge(method, probe.shown, probe.answer)
                        if open_to_me:
                            continue
                        status = probe.answer.status
                        if names_object and not probe.answer.refused(rule.also_allowed):
                            problem = f"answered {status} for {victim.key}'s object (a refusal is 401/403/404/405)"
                            found.append(Violation(attacker.label, method, probe.shown, problem))
                        elif status != baseline.answer.status:
                            problem = (
                                f"answered {status} for {victim.key}'s object but {baseline.answer.status} "
                                "for a missing one (tells that it exists)"
                            )
                            found.append(Violation(attacker.label, method, probe.shown, problem))
    return found


# Coverage and reach ------------------------------------------------------------------


def coverage_problems(
    routes: tuple[Route, ...], registry: Registry, world: dict[str, Party], urlconf: str | None = None
) -> list[str]:
    """Routes the walk could not fill, references nothing makes, stale registrations."""
    problems = []
    known = set().union(*(party.values for party in world.values()))
    templates = {route.template for route in routes}
    for route in routes:
        if registry.exemption(route.template):
            continue
        for name in route.params:
            filler = registry.filler(route.template, name)
            if filler is None:
                problems.append(
                    f"{route.template}: nothing fills {{{name}}}; register it in tests/<app>/isolation.py with "
                    f'isolation.route("{route.template}", {name}="<kind>.<attr>") or isolation.param("{name}", ...)'
                )
            elif isinstance(filler, Ref) and filler.name not in known:
                problems.append(f"{route.template}: {{{name}}} takes {filler.name!r}, which no factory makes")
        rule = registry.rule(route.template)
        for spec in [*rule.bodies.values(), *rule.queries]:
            for key, value in spec.items():
                if isinstance(value, Ref) and value.name not in known:
                    problems.append(f"{route.template}: {key} takes {value.name!r}, which no factory makes")
    for template in registry.routes:
        if template not in templates:
            problems.append(f"{template} is registered but no such route exists (renamed?)")
    shapes = {_shape(route.template) for route in routes}
    for shape in schema_methods(urlconf):
        if shape not in shapes:
            problems.append(f"OpenAPI path {shape} matches no route of the resolver")
    for party in world.values():
        if not party.secrets:
            problems.append(f"institution {party.key}: the factories made no secret string to look for")
    return problems


def unreachable(routes: tuple[Route, ...], registry: Registry, owner: Party, users: list[User]) -> list[str]:
    """GET routes with parameters that none of ``users`` can open with ``owner``'s own objects.

    If the factories' values never reach a real object, every walk request
    404s and proves nothing; this is the check that they do.
    """
    problems = []
    clients = [client_for(user) for user in users]
    with quiet_request_log():
        for route in routes:
            rule = registry.rule(route.template)
            if not route.params or "get" not in route.methods or registry.exemption(route.template):
                continue
            if not rule.reachable or any(registry.filler(route.template, n) is None for n in route.params):
                continue  # the coverage check reports unfilled routes
            path = _fill_path(route, registry, owner.values)
            statuses = [ask(client, "get", path).status for client in clients]
            if set(statuses) == {405}:
                continue  # no GET at all: an action route
            if not any(200 <= status < 300 for status in statuses):
                problems.append(
                    f"{path}: no user of its own institution gets it (statuses {sorted(set(statuses))}); "
                    "the factory's values do not reach a real object, or register reachable=False with a reason"
                )
    return problems


def report(violations: list[Violation], limit: int = 200) -> str:
    lines = [str(v) for v in violations[:limit]]
    more = len(violations) - len(lines)
    return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))
