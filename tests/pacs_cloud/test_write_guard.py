"""Every write is an action: views, API and task modules change nothing stored themselves.

Pages, REST endpoints, DICOMweb, WebSocket consumers and Celery tasks call a
``do_*`` function of their app's ``actions`` module, which runs in a
transaction with its audit event. This test reads those modules (of the six
apps and of their sub-packages, found by name, so a new ``views.py`` or
``api.py`` is covered the day it appears) and fails on a direct write.

What counts as a write, by the method called:

* ``create``, ``get_or_create``, ``update_or_create``, ``bulk_create``,
  ``bulk_update`` on anything but ``super()`` (DRF's ``super().create()``
  only dispatches to ``perform_create``);
* ``save`` and ``delete`` on anything (a model, a serializer, a form), except
  ``save(commit=False)`` (nothing is stored) and the session and the cache
  (not the product's stored state);
* ``update`` only on a queryset: a receiver reached through ``.objects`` or a
  queryset method (``filter``, ``select_for_update``...), or a name bound to
  one in the same module. ``dict.update``, ``set.update`` and a hash's
  ``update`` are not writes;
* a DRF view on a writable base (``ModelViewSet``, ``CreateModelMixin``...)
  that accepts a write without defining its handler or ``perform_*`` hook:
  the inherited one calls ``serializer.save()``.

A call that is none of these yet is a legitimate write goes in ``ALLOWED``
with its reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("pacs_cloud", "archive", "worklist", "workflow", "viewer", "reports")
# Modules that answer callers or run as background tasks, by file name.
ENTRY_NAMES = {"views", "api", "tasks", "home", "pages", "dicomweb", "consumers"}
ENTRY_SUFFIXES = ("_views", "_api", "_tasks")

ALWAYS = {"create", "get_or_create", "update_or_create", "bulk_create", "bulk_update"}
ANY_RECEIVER = {"save", "delete"}
QUERYSET_ONLY = {"update"}
QUERYSET_METHODS = {
    "objects",
    "_default_manager",
    "all",
    "filter",
    "exclude",
    "select_for_update",
    "select_related",
    "prefetch_related",
    "order_by",
    "only",
    "defer",
    "annotate",
    "distinct",
    "get_queryset",
}
# Receivers whose save/delete change no stored state of the product.
NOT_STORED = {"session", "cache"}

# (module path, enclosing function, method) -> why the write is allowed there.
ALLOWED: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    function: str
    method: str
    call: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}(): {self.call}"


def entry_modules() -> list[Path]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            in_entry_package = path.parent.name in ENTRY_NAMES
            if path.stem in ENTRY_NAMES or path.stem.endswith(ENTRY_SUFFIXES) or in_entry_package:
                found.append(path)
    return found


def _chain(node: ast.expr) -> list[str]:
    """The names along an attribute/call chain, outermost last: ``A.objects.filter(..).x`` -> [A, objects, filter, x]."""
    names: list[str] = []
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Name):
            names.append(node.id)
            break
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            break
    return names[::-1]


def _is_queryset(node: ast.expr, querysets: set[str]) -> bool:
    chain = _chain(node)
    return bool(set(chain) & QUERYSET_METHODS) or (bool(chain) and chain[0] in querysets)


def _queryset_names(tree: ast.AST) -> set[str]:
    """Names assigned a queryset anywhere in the module (``qs = X.objects.filter(...)``), to a fixed point."""
    names: set[str] = {"qs", "queryset"}
    while True:
        before = len(names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _is_queryset(node.value, names):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
                if _is_queryset(node.value, names):
                    names.add(node.target.id)
        if len(names) == before:
            return names


def _is_write(call: ast.Call, querysets: set[str]) -> bool:
    if not isinstance(call.func, ast.Attribute):
        return False
    method, receiver = call.func.attr, call.func.value
    chain = _chain(receiver)
    if method in ALWAYS:
        return not (isinstance(receiver, ast.Call) and chain == ["super"])
    if method in ANY_RECEIVER:
        if method == "save" and any(
            k.arg == "commit" and isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords
        ):
            return False
        return not (set(chain) & NOT_STORED)
    if method in QUERYSET_ONLY:
        return _is_queryset(receiver, querysets)
    return False


# DRF's writable bases save through ``serializer.save()`` or ``instance.delete()`` in
# methods a view inherits unless it overrides them: a view on such a base must
# define, for each write it accepts, the handler or its ``perform_*`` hook.
WRITABLE_BASES = {
    "ModelViewSet": ("create", "update", "destroy"),
    "CreateModelMixin": ("create",),
    "UpdateModelMixin": ("update",),
    "DestroyModelMixin": ("destroy",),
    "CreateAPIView": ("create",),
    "ListCreateAPIView": ("create",),
    "UpdateAPIView": ("update",),
    "DestroyAPIView": ("destroy",),
    "RetrieveUpdateAPIView": ("update",),
    "RetrieveDestroyAPIView": ("destroy",),
    "RetrieveUpdateDestroyAPIView": ("update", "destroy"),
}
HANDLERS = {
    "create": ({"create", "perform_create"}, "post"),
    "update": ({"update", "partial_update", "perform_update"}, "patch"),
    "destroy": ({"destroy", "perform_destroy"}, "delete"),
}


def _http_methods(cls: ast.ClassDef) -> set[str] | None:
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "http_method_names" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return {str(v) for v in value}
    return None


def inherited_writes(cls: ast.ClassDef, path: str) -> list[Violation]:
    """A DRF view that would save through a write handler it inherits."""
    kinds = {k for base in cls.bases for k in WRITABLE_BASES.get(_chain(base)[-1] if _chain(base) else "", ())}
    defined = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    accepted = _http_methods(cls)
    found = []
    for kind in sorted(kinds):
        handlers, verb = HANDLERS[kind]
        if handlers & defined or (accepted is not None and verb not in accepted and "put" not in accepted):
            continue
        if (path, cls.name, f"inherited {kind}") not in ALLOWED:
            found.append(Violation(path, cls.lineno, cls.name, kind, f"inherited {kind} saves the serializer"))
    return found


def violations_in(source: str, path: str, allowed: dict[tuple[str, str, str], str] | None = None) -> list[Violation]:
    """Direct writes in ``source``, less those ``allowed`` (``ALLOWED`` by default)."""
    allowed = ALLOWED if allowed is None else allowed
    tree = ast.parse(source)
    querysets = _queryset_names(tree)
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
            if isinstance(child, ast.Call) and _is_write(child, querysets):
                method = child.func.attr  # type: ignore[attr-defined]
                if (path, name, method) not in allowed:
                    found.append(Violation(path, child.lineno, name, method, ast.unparse(child)[:120]))
            visit(child, name)

    visit(tree, "<module>")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            found += inherited_writes(node, path)
    return found


def test_views_api_and_tasks_write_only_through_actions():
    modules = entry_modules()
    assert ROOT / "workflow" / "views.py" in modules and ROOT / "reports" / "tasks.py" in modules
    found = [v for path in modules for v in violations_in(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "write through a do_* action instead:\n" + "\n".join(map(str, found))


def test_every_allowed_write_still_exists():
    written = {
        (v.path, v.function, v.method)
        for path in entry_modules()
        for v in violations_in(path.read_text(), str(path.relative_to(ROOT)), allowed={})
    }
    for key, reason in ALLOWED.items():
        assert reason.strip(), f"say why {key} is allowed"
        assert key in written, f"stale allow-list entry {key}: remove it"


def test_it_finds_modules_in_sub_packages():
    paths = {str(p.relative_to(ROOT)) for p in entry_modules()}
    assert "archive/edge/pages.py" in paths
    assert not any("migrations" in p for p in paths)


def _calls(source: str) -> list[str]:
    return [v.call for v in violations_in(source, "planted.py")]


def test_the_guard_catches_each_kind_of_direct_write():
    planted = """
def view(request, pk):
    pool = Pool.objects.get(pk=pk)
    pool.name = "x"
    pool.save()
    pool.delete()
    Pool.objects.create(name="y")
    Pool.objects.filter(pk=pk).update(name="z")
    Member.objects.get_or_create(pool=pool)
    Member.objects.update_or_create(pool=pool)
    Member.objects.bulk_create([])
    Member.objects.bulk_update([], ["name"])
    pool.members.create(user=request.user)
    serializer.save()
    form.save()
    rows = Member.objects.filter(pool=pool)
    rows.update(is_active=False)
"""
    methods = [v.method for v in violations_in(planted, "planted.py")]
    assert methods == [
        "save",
        "delete",
        "create",
        "update",
        "get_or_create",
        "update_or_create",
        "bulk_create",
        "bulk_update",
        "create",
        "save",
        "save",
        "update",
    ]


def test_the_guard_catches_a_view_that_inherits_a_save():
    planted = """
class Pools(viewsets.ModelViewSet):
    http_method_names = ["get", "post", "patch"]

    def perform_create(self, serializer):
        serializer.instance = actions.do_create_pool(**serializer.validated_data)


class Members(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    def destroy(self, request, pk):
        actions.do_remove_member(pk)
"""
    assert [(v.function, v.method) for v in violations_in(planted, "planted.py")] == [
        ("Pools", "update"),
        ("Members", "create"),
    ]


def test_the_guard_lets_non_writes_through():
    harmless = """
class Things(viewsets.ModelViewSet):
    http_method_names = ["get", "post"]

    def create(self, request):
        return super().create(request)

def view(request):
    context = {}
    context.update(a=1)
    digest = hashlib.sha256()
    digest.update(b"x")
    seen = set()
    seen.update([1])
    item = form.save(commit=False)
    request.session.save()
    cache.delete("key")
"""
    assert _calls(harmless) == []


ARCHIVE_MODELS = {"Patient", "Study", "Series", "Instance"}


def archive_writes_in(source: str, path: str) -> list[Violation]:
    """Writes on the archive's own models (``Patient.objects.create(...)``), which only the archive makes."""
    return [v for v in violations_in(source, path) if v.call.split(".", 1)[0] in ARCHIVE_MODELS]


def test_only_the_archive_writes_patients_and_studies():
    found = []
    for app in APPS:
        if app == "archive":
            continue
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                found += archive_writes_in(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "ask an archive action instead:\n" + "\n".join(map(str, found))


def test_the_guard_catches_a_patient_created_outside_the_archive():
    planted = "def register(name):\n    return Patient.objects.create(name=name)\n"
    assert [v.method for v in archive_writes_in(planted, "worklist/planted.py")] == ["create"]
