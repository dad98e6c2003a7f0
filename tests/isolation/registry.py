"""What the isolation harness knows about each app's objects and routes (see the package docstring)."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Registration modules load in layer order, then any others by name.
LAYER_ORDER = ["pacs_cloud", "archive", "worklist", "workflow", "viewer", "reports"]


@dataclass(frozen=True)
class Ref:
    """A reference to a value a factory returned, e.g. ``Ref("study.uid")``."""

    name: str


@dataclass(frozen=True)
class Const:
    """A fixed value (a frame number, a format), the same for every institution."""

    value: str


def const(value: object) -> Const:
    return Const(str(value))


class Form(dict):
    """A body sent form-encoded (a browser form) instead of as JSON."""


Filler = Ref | Const


def _filler(value: Filler | str) -> Filler:
    return value if isinstance(value, (Ref, Const)) else Ref(value)


@dataclass
class Made:
    """What a factory made for one institution.

    ``values``: named values routes are filled with (``"study.uid"`` → the UID).
    ``secrets``: strings no other institution may ever see.
    """

    values: dict[str, object] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)


@dataclass
class RouteRule:
    params: dict[str, Filler] = field(default_factory=dict)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: list[dict[str, Any]] = field(default_factory=list)
    open_to: frozenset[str] = frozenset()
    also_allowed: frozenset[int] = frozenset()
    reachable: bool = True
    reason: str = ""


@dataclass
class Registry:
    factories: list[Callable[[Any], Made]] = field(default_factory=list)
    params: dict[str, Filler] = field(default_factory=dict)
    routes: dict[str, RouteRule] = field(default_factory=dict)
    exemptions: dict[str, str] = field(default_factory=dict)  # template or prefix* → reason

    def copy(self) -> Registry:
        return Registry(list(self.factories), dict(self.params), copy.deepcopy(self.routes), dict(self.exemptions))

    # Registration ------------------------------------------------------------

    def factory(self, fn: Callable[[Any], Made]) -> Callable[[Any], Made]:
        self.factories.append(fn)
        return fn

    def param(self, name: str, value: Filler | str) -> None:
        """Fill the path parameter ``name`` of every route with ``value``."""
        self.params[name] = _filler(value)

    def route(
        self,
        template: str,
        *,
        bodies: dict[str, dict[str, Any]] | None = None,
        queries: list[dict[str, Any]] | None = None,
        open_to: set[str] | frozenset[str] = frozenset(),
        also_allowed: set[int] | frozenset[int] = frozenset(),
        reachable: bool = True,
        reason: str = "",
        **params: Filler | str,
    ) -> None:
        """Fill ``template``'s parameters; optionally bodies, queries and who may see it."""
        if not reachable and not reason:
            raise ValueError(f"{template}: say why no user can GET it (reason=...)")
        self.routes[template] = RouteRule(
            params={name: _filler(value) for name, value in params.items()},
            bodies={method.lower(): body for method, body in (bodies or {}).items()},
            queries=list(queries or []),
            open_to=frozenset(open_to),
            also_allowed=frozenset(also_allowed),
            reachable=reachable,
            reason=reason,
        )

    def exempt(self, template: str, reason: str) -> None:
        """Leave ``template`` out of the walk (``/prefix/*`` for everything under a prefix)."""
        if not reason:
            raise ValueError("an exemption needs a reason")
        self.exemptions[template] = reason

    # Lookup ------------------------------------------------------------------

    def exemption(self, template: str) -> str | None:
        for key, reason in self.exemptions.items():
            if key == template or (key.endswith("*") and template.startswith(key[:-1])):
                return reason
        return None

    def rule(self, template: str) -> RouteRule:
        return self.routes.get(template, RouteRule())

    def filler(self, template: str, param: str) -> Filler | None:
        return self.rule(template).params.get(param) or self.params.get(param)


REGISTRY = Registry()
factory = REGISTRY.factory
param = REGISTRY.param
route = REGISTRY.route
exempt = REGISTRY.exempt

_loaded = False


def load_registrations() -> Registry:
    """Import every ``tests/<app>/isolation.py`` once; returns the filled registry."""
    global _loaded
    if not _loaded:
        tests_dir = Path(__file__).resolve().parent.parent
        found = sorted(p.parent.name for p in tests_dir.glob("*/isolation.py"))
        ordered = [a for a in LAYER_ORDER if a in found] + [a for a in found if a not in LAYER_ORDER]
        for app in ordered:
            importlib.import_module(f"tests.{app}.isolation")
        _loaded = True
    return REGISTRY
