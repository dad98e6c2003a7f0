"""Imports point one way: ``pacs_cloud`` ← ``archive`` ← ``worklist``, ``workflow`` ← ``viewer``, ``reports``.

Read from the source with ``ast``: every module of the six apps (not their
migrations), its ``import`` statements wherever they sit (a function-level
import counts too), and the places that name another app as a string: a
model looked up by label (``apps.get_model("archive", "Study")``), a module
imported by its dotted name (``import_module``, ``import_string``,
``include``, ``get_app_config``) and a relation to another app's model
(``ForeignKey("archive.Study")``). A lower app that must tell a higher one
something sends a signal it declares itself (STYLE.md, "Layout").
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYER = {"pacs_cloud": 0, "archive": 1, "worklist": 2, "workflow": 2, "viewer": 3, "reports": 3}
APPS = tuple(LAYER)

# Imports between two apps of one layer that the design allows, and why. The
# reverse direction stays forbidden, so the two never import each other.
SIDEWAYS = {
    ("workflow", "worklist"): (
        "the reading workflow routes on an exam's order (worklist.facts), follows its cancellation and priority "
        "(worklist.signals, connected in AppConfig.ready()), and an imported study gets an order (worklist.actions)"
    ),
    ("reports", "viewer"): "a report's PDF renders its key images with the viewer's renderer; the demo marks one",
}
# The project's root URLconf names every app's urls module: the one place the
# bottom layer names the apps, as the settings' INSTALLED_APPS does.
ROOT_URLCONF_INCLUDES = ("pacs_cloud/urls.py", "include")

BY_NAME_CALLS = {"get_model", "import_module", "import_string", "include", "get_app_config"}
RELATIONS = {"ForeignKey", "OneToOneField", "ManyToManyField"}


@dataclass(frozen=True)
class Reference:
    source: str  # the app holding the module
    target: str  # the app it reaches
    where: str  # path:line
    how: str  # "import" or the call naming the app

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target} ({self.how})"


def modules(app: str) -> Iterator[Path]:
    for path in sorted((ROOT / app).rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if "migrations" in parts or "tests" in parts:
            continue
        yield path


def _called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _app_of_dotted(name: str) -> str:
    return name.split(".")[0]


def _resolve_relative(path: Path, node: ast.ImportFrom) -> str:
    # The package holding the module (for an __init__.py, the package itself).
    package = list(path.relative_to(ROOT).parts[:-1])
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


def references(app: str) -> Iterator[Reference]:
    """Every reference from ``app``'s modules to another of the six apps."""
    for path in modules(app):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            names: list[tuple[str, str]] = []
            if isinstance(node, ast.Import):
                names = [(alias.name, "import") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _resolve_relative(path, node) if node.level else (node.module or "")
                names = [(module, "import")]
            elif isinstance(node, ast.Call):
                called = _called_name(node)
                first = node.args[0] if node.args else None
                if called in RELATIONS and first is None:
                    first = next((k.value for k in node.keywords if k.arg == "to"), None)
                if (called in BY_NAME_CALLS or called in RELATIONS) and isinstance(first, ast.Constant):
                    if isinstance(first.value, str):
                        names = [(first.value, called)]
            for name, how in names:
                target = _app_of_dotted(name)
                if target in APPS and target != app:
                    yield Reference(app, target, f"{rel}:{node.lineno}", how)


def all_references() -> list[Reference]:
    return [ref for app in APPS for ref in references(app)]


def is_root_urlconf(ref: Reference) -> bool:
    return (ref.where.split(":")[0], ref.how) == ROOT_URLCONF_INCLUDES


def is_allowed(ref: Reference) -> bool:
    if is_root_urlconf(ref):
        return True
    if LAYER[ref.target] < LAYER[ref.source]:
        return True
    if LAYER[ref.target] == LAYER[ref.source]:
        return (ref.source, ref.target) in SIDEWAYS
    return False


def test_the_scan_sees_the_apps_imports():
    # The graph is read, not assumed: the archive's use of the platform and the
    # reports' use of the archive and the reading workflow are found.
    edges = {(ref.source, ref.target) for ref in all_references()}
    assert {("archive", "pacs_cloud"), ("reports", "archive"), ("reports", "workflow")} <= edges
    hows = {ref.how for ref in all_references()}
    assert {"import", "ForeignKey"} <= hows


def test_no_import_runs_upward_or_sideways_without_a_reason():
    wrong = [str(ref) for ref in all_references() if not is_allowed(ref)]
    assert wrong == []


def test_apps_of_one_layer_never_import_each_other_both_ways():
    for source, target in SIDEWAYS:
        assert (target, source) not in SIDEWAYS


def test_the_platform_names_no_app_statically_or_by_name():
    found = [str(ref) for ref in references("pacs_cloud") if not is_root_urlconf(ref)]
    assert found == []


def test_the_checker_catches_an_upward_import_and_a_model_looked_up_by_label(tmp_path, monkeypatch):
    app = tmp_path / "pacs_cloud"
    app.mkdir()
    (app / "bad.py").write_text(
        "from django.apps import apps\n"
        "def f():\n"
        "    from archive.models import Study\n"
        "    return apps.get_model('archive', 'Series'), apps.get_model('reports.Report')\n"
    )
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "sub").mkdir()
    (tmp_path / "archive" / "sub" / "x.py").write_text(
        "from .. import models\nfrom workflow.models import ReadingTask\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = {(ref.source, ref.target, ref.how) for app in ("pacs_cloud", "archive") for ref in references(app)}
    assert found == {
        ("pacs_cloud", "archive", "import"),
        ("pacs_cloud", "archive", "get_model"),
        ("pacs_cloud", "reports", "get_model"),
        ("archive", "workflow", "import"),
    }
