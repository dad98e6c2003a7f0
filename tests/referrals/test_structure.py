"""Referrals are a part of their own: who may import what, read from the source of every module.

``workflow/referrals/`` is reached from outside only through its ``actions``,
``access``, ``api`` and ``models`` (and its URLs, included by name); the
reading workflow reaches it only through ``actions``, ``access`` and
``models``, and it reaches the reading workflow only through those three of
the workflow app's own (and of its patient-links part, ``workflow/links/``). The referral models are imported from the part, not
through ``workflow.models`` (which imports them only so Django finds them).
The part's own tests (``tests/referrals/``) may import any of its modules.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.urls import reverse

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {"var", "node_modules", "__pycache__"}

PART = "workflow.referrals"
PART_DOORS = {f"{PART}.{name}" for name in ("actions", "access", "api", "models")}
PART_DOORS_FOR_READING = {f"{PART}.{name}" for name in ("actions", "access", "models")}
# The workflow app's own doors, and those of its patient-links part (workflow/links/),
# which a referral's import and end tell (a link made, linked priors withdrawn).
READING_DOORS = {"workflow.actions", "workflow.access", "workflow.models"} | {
    f"workflow.links.{name}" for name in ("actions", "access", "models")
}
PART_TESTS = "tests.referrals"


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module imported (``from m import name`` of a submodule counts as the submodule)
    names: tuple[str, ...]
    where: str


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_sources(root: Path) -> dict[str, str]:
    """Every .py file of the repository (not virtual environments, data or hidden folders), by relative path."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIPPED_DIRS and not d.startswith(".") and not (Path(folder, d) / "pyvenv.cfg").exists()
        ]
        for name in files:
            if name.endswith(".py"):
                path = Path(folder, name)
                found[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    return found


def imports(sources: dict[str, str]) -> Iterator[Import]:
    """Every import statement (at any depth: function-level imports count) resolved to the module it loads."""
    modules = {module_name(path) for path in sources}
    for path, source in sources.items():
        importer = module_name(path)
        package = importer if path.endswith("__init__.py") else importer.rpartition(".")[0]
        for node in ast.walk(ast.parse(source, filename=path)):
            where = f"{path}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(importer, alias.name, (), where)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".") if package else []
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                attributes = []
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:
                        yield Import(importer, submodule, (), where)
                    else:
                        attributes.append(alias.name)
                if attributes:
                    yield Import(importer, base, tuple(attributes), where)


def in_part(module: str) -> bool:
    return module == PART or module.startswith(PART + ".")


def in_reading_workflow(module: str) -> bool:
    return (module == "workflow" or module.startswith("workflow.")) and not in_part(module)


def referral_model_names(sources: dict[str, str]) -> set[str]:
    """The names ``workflow/models.py`` takes from the part (so that Django finds them)."""
    tree = ast.parse(sources.get("workflow/models.py", ""))
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level and (node.module or "").startswith("referrals")
        for alias in node.names
    }


def violations(sources: dict[str, str]) -> list[str]:
    found = []
    through_workflow_models = referral_model_names(sources)
    for imp in imports(sources):
        importer, target = imp.importer, imp.target
        if in_part(target) and not in_part(importer) and not importer.startswith(PART_TESTS):
            doors = PART_DOORS_FOR_READING if in_reading_workflow(importer) else PART_DOORS
            if target not in doors:
                found.append(f"{imp.where}: {importer} imports {target}, not one of {sorted(doors)}")
        if in_part(importer) and in_reading_workflow(target) and target not in READING_DOORS:
            found.append(f"{imp.where}: {importer} imports {target}, not one of {sorted(READING_DOORS)}")
        if target == "workflow.models" and importer != "workflow.models":
            borrowed = sorted(set(imp.names) & through_workflow_models)
            if borrowed:
                found.append(f"{imp.where}: {importer} imports {borrowed} through workflow.models, not {PART}.models")
    return found


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return python_sources(ROOT)


def test_the_walk_reads_the_whole_repository_and_resolves_its_imports(sources):
    assert {"workflow/referrals/actions.py", "workflow/actions.py", "reports/api.py", "manage.py"} <= set(sources)
    assert not any(path.startswith((".venv/", "var/")) for path in sources)
    edges = {(i.importer, i.target) for i in imports(sources)}
    # An absolute import, a relative one, a submodule named in a from-import, a function-level import.
    assert ("workflow.referrals.api", "pacs_cloud.api") in edges
    assert ("workflow.referrals.api", "workflow.referrals.actions") in edges
    assert ("workflow.models", "workflow.referrals.models") in edges
    assert ("tests.referrals.conftest", "workflow.referrals.actions") in edges
    assert ("workflow.referrals.views", "worklist.actions") in edges
    assert referral_model_names(sources) == {
        "ImportedStudy",
        "Referral",
        "ReferralMessage",
        "ReferralStudy",
        "StudyShare",
    }


def test_referrals_and_the_reading_workflow_reach_each_other_only_through_actions_access_and_models(sources):
    assert violations(sources) == []


def test_the_part_has_the_files_of_an_app_and_the_old_flat_modules_are_gone(sources):
    part = {Path(p).name for p in sources if p.startswith("workflow/referrals/")}
    assert {"models.py", "actions.py", "access.py", "api.py", "views.py", "urls.py", "tasks.py", "demo.py"} <= part
    for old in ("referrals", "referral_api", "referral_views", "sharing", "share_views", "exchange"):
        assert f"workflow/{old}.py" not in sources


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("reports/api.py", "from workflow.referrals.views import referral_list"),
        ("reports/api.py", "from workflow.referrals import views"),
        ("viewer/views.py", "import workflow.referrals.tasks"),
        ("workflow/views.py", "from .referrals import api"),
        ("workflow/home.py", "def f():\n    from .referrals.views import home_panels"),
        ("workflow/referrals/views.py", "from ..serializers import viewer_url"),
        ("workflow/referrals/api.py", "from workflow import policy"),
        ("workflow/referrals/actions.py", "from workflow.api import REFUSAL_STATUS"),
        ("reports/access.py", "from workflow.models import ReadingTask, StudyShare"),
        ("tests/reports/test_pages.py", "from workflow.referrals.demo import seed"),
    ],
)
def test_the_check_refuses_an_import_across_the_line(path, source):
    stubs = {
        f"{module.replace('.', '/')}.py": ""
        for module in [
            *PART_DOORS,
            f"{PART}.views",
            f"{PART}.tasks",
            f"{PART}.demo",
            "workflow.serializers",
            "workflow.policy",
            "workflow.api",
        ]
    }
    stubs["workflow/models.py"] = "from .referrals.models import Referral, StudyShare  # noqa"
    assert violations(stubs) == []
    (found,) = violations({**stubs, path: source})
    assert found.startswith(f"{path}:")


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("reports/api.py", "from workflow.referrals import access, actions"),
        ("reports/api.py", "from workflow.referrals.api import ReferralViewSet"),
        ("workflow/models.py", "from .referrals.models import Referral  # noqa"),
        ("workflow/actions.py", "from .referrals import actions"),
        ("workflow/referrals/access.py", "from ..access import reader"),
        ("workflow/referrals/access.py", "from workflow.models import ReadingTask"),
        ("tests/referrals/test_demo.py", "from workflow.referrals import demo, tasks"),
    ],
)
def test_the_check_lets_an_import_through_a_door_pass(path, source):
    stubs = {
        f"{module.replace('.', '/')}.py": ""
        for module in [*PART_DOORS, f"{PART}.demo", f"{PART}.tasks", "workflow.access", "workflow.actions"]
    }
    assert violations({**stubs, "workflow/models.py": "", path: source}) == []


def test_its_pages_and_api_keep_their_addresses_and_names():
    pk = "8c7a3c8e-0f5e-4d8e-9a51-1f0b6f6a2a10"
    addresses = {
        ("workflow-list-referrals", ()): "/referrals/",
        ("workflow-create-referral", ()): "/referrals/new/",
        ("workflow-view-referral", (pk,)): f"/referrals/{pk}/",
        ("workflow-change-referral", (pk,)): f"/referrals/{pk}/act/",
        ("workflow-list-shares", ()): "/shares/",
        ("workflow-create-share", ()): "/shares/new/",
        ("workflow-change-share", (pk,)): f"/shares/{pk}/act/",
        ("referral-list", ()): "/api/v1/referrals/",
        ("referral-detail", (pk,)): f"/api/v1/referrals/{pk}/",
        ("referral-return", (pk,)): f"/api/v1/referrals/{pk}/return/",
        ("referral-import", (pk,)): f"/api/v1/referrals/{pk}/import/",
        ("referral-timeline", (pk,)): f"/api/v1/referrals/{pk}/timeline/",
        ("study-share-list", ()): "/api/v1/study-shares/",
        ("study-share-revoke", (pk,)): f"/api/v1/study-shares/{pk}/revoke/",
        ("study-share-import", (pk,)): f"/api/v1/study-shares/{pk}/import/",
    }
    for (name, args), path in addresses.items():
        assert reverse(name, args=args) == path
    for verb in ("send", "accept", "decline", "admit", "close", "cancel", "consent", "attach", "detach", "messages"):
        assert reverse(f"referral-{verb}", args=[pk]) == f"/api/v1/referrals/{pk}/{verb}/"


def test_a_worker_knows_every_task_the_beat_schedules():
    """The worker loads tasks modules by autodiscovery and ``CELERY_IMPORTS`` only (a fresh process)."""
    script = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from pacs_cloud.celery import app\n"
        "app.loader.import_default_modules()\n"
        "print(sorted(e['task'] for e in settings.CELERY_BEAT_SCHEDULE.values() if e['task'] not in app.tasks))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "pacs_cloud.settings"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
