"""The one door for studies (``archive.access``): who sees a study, and 404 alike for missing and not yours."""

from __future__ import annotations

import ast
import itertools
import uuid
from datetime import date
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.http import Http404

from archive import access
from archive.actions import grant_study_view, revoke_study_view
from archive.models import Instance, Patient, Series, Study, StudyGroupObjectPermission, StudyUserObjectPermission
from pacs_cloud.models import CLINICAL_ROLES, Membership, Role, role_group_name
from tests.pacs_cloud.test_import_graph import APPS, ROOT, modules

_counter = itertools.count(1)


def study_at(institution, *, uid: str | None = None) -> Study:
    n = next(_counter)
    patient = Patient.objects.create(institution=institution, patient_id=f"ACCESS{n}", name="DOE^JANE")
    study = Study.objects.create(
        institution=institution,
        patient=patient,
        study_instance_uid=uid or f"1.2.826.0.1.3680043.10.7.{n}",
        study_date=date(2026, 11, 2),
        accession_number=f"ACS{n}",
        modalities="CT",
    )
    series = Series.objects.create(study=study, series_instance_uid=f"{study.study_instance_uid}.1", modality="CT")
    Instance.objects.create(
        institution=institution,
        series=series,
        sop_instance_uid=f"{series.series_instance_uid}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1,
        sha256="0" * 64,
        storage_key=f"test/{n}",
    )
    return study


def sees(user, study: Study) -> bool:
    """Every reading of the rule for one study, which must agree."""
    answers = {
        "visible": access.visible_studies(user).filter(pk=study.pk).exists(),
        "searchable": access.searchable_studies(user).filter(pk=study.pk).exists(),
        "can_view": access.can_view_study(user, study),
        "series": access.visible_series(user).filter(study=study).exists(),
        "instances": access.visible_instances(user).filter(series__study=study).exists(),
    }
    try:
        access.access_study(user, pk=study.pk)
        answers["access"] = True
    except Http404:
        answers["access"] = False
    assert len(set(answers.values())) == 1, answers
    return answers["visible"]


@pytest.fixture
def studies(tenants):
    return {"a": study_at(tenants.a.institution), "b": study_at(tenants.b.institution)}


def test_every_clinical_role_sees_its_own_institutions_studies_and_no_other(tenants, studies):
    for role in CLINICAL_ROLES:
        user = getattr(tenants.a, role.value)
        assert sees(user, studies["a"]), role
        assert not sees(user, studies["b"]), role
    for role in CLINICAL_ROLES:
        assert not sees(getattr(tenants.c, role.value), studies["a"]), role


def test_a_user_grant_shows_that_study_to_that_user_until_revoked(tenants, studies):
    reader = tenants.b.radiologist
    assert not sees(reader, studies["a"])
    grant_study_view(studies["a"], user=reader)
    assert sees(reader, studies["a"])
    assert not sees(tenants.b.clinician, studies["a"])
    assert revoke_study_view(studies["a"], user=reader) == 1
    assert not sees(reader, studies["a"])


def test_a_group_grant_shows_the_study_to_the_groups_members_only(tenants, studies):
    clinicians = Group.objects.get(name=role_group_name(tenants.b.institution, Role.CLINICIAN))
    grant_study_view(studies["a"].pk, groups=[clinicians])
    assert sees(tenants.b.clinician, studies["a"])
    assert not sees(tenants.b.technologist, studies["a"])
    assert not sees(tenants.c.clinician, studies["a"])
    assert revoke_study_view(studies["a"], groups=Group.objects.filter(pk=clinicians.pk)) == 1
    assert not sees(tenants.b.clinician, studies["a"])


def test_granting_twice_keeps_one_grant(tenants, studies):
    clinicians = Group.objects.get(name=role_group_name(tenants.b.institution, Role.CLINICIAN))
    for _ in range(2):
        grant_study_view(studies["a"], user=tenants.b.radiologist, groups=[clinicians])
    assert StudyUserObjectPermission.objects.filter(content_object=studies["a"]).count() == 1
    assert StudyGroupObjectPermission.objects.filter(content_object=studies["a"]).count() == 1


def test_administrators_see_no_study_by_their_role(tenants, studies, platform_admin):
    for user in (tenants.a.institution_admin, platform_admin):
        assert not sees(user, studies["a"])
        assert not access.visible_studies(user).exists()
        assert access.study_reach(user) == access.NO_REACH


def test_a_suspended_membership_or_account_sees_nothing(tenants, studies):
    Membership.objects.filter(user=tenants.a.clinician).update(is_active=False)
    tenants.a.technologist.is_active = False
    tenants.a.technologist.save(update_fields=["is_active"])
    grant_study_view(studies["b"], user=tenants.a.technologist)
    assert not sees(tenants.a.clinician, studies["a"])
    assert not sees(tenants.a.technologist, studies["b"])


def test_missing_and_not_yours_are_the_same_404(tenants, studies):
    user = tenants.a.clinician
    refusals = []
    for lookup in (
        {"pk": uuid.uuid4()},
        {"pk": studies["b"].pk},
        {"pk": "not-a-uuid"},
        {"uid": "1.2.3.4.5"},
        {"uid": studies["b"].study_instance_uid},
    ):
        with pytest.raises(Http404) as refused:
            access.access_study(user, **lookup)
        refusals.append(str(refused.value))
    assert set(refusals) == {"No such study"}


def test_a_uid_held_at_two_institutions_opens_the_callers_own_copy(tenants):
    theirs = study_at(tenants.b.institution, uid="1.2.826.0.1.3680043.10.7.999")
    ours = study_at(tenants.a.institution, uid="1.2.826.0.1.3680043.10.7.999")
    grant_study_view(theirs, user=tenants.a.radiologist)
    assert access.access_study(tenants.a.radiologist, uid=ours.study_instance_uid) == ours
    assert access.access_study(tenants.b.radiologist, uid=ours.study_instance_uid) == theirs


# Grants are written in one place ---------------------------------------------

GRANT_WRITERS = {"assign_perm", "remove_perm", "bulk_assign_perm", "bulk_remove_perm", "assign", "remove_obj_perms"}
GRANT_MODELS = {
    "StudyUserObjectPermission",
    "StudyGroupObjectPermission",
    "UserObjectPermission",
    "GroupObjectPermission",
}
WRITES = {"create", "bulk_create", "get_or_create", "update_or_create", "update", "delete", "save", "bulk_update"}
# Where the grant models may be named: defined, read by the one door, written by the actions.
GRANT_MODULES = {
    "archive/models.py": "defines",
    "archive/access.py": "reads",
    "archive/actions.py": "writes",
    "archive/apps.py": "forgets the searches' memo of grants when one changes",
}


def grant_code_outside_the_actions(root: Path) -> list[str]:
    """Places outside ``archive/actions.py`` that write study grants or name the grant models."""
    found = []
    paths = [path for app in APPS for path in modules(app)]
    paths += sorted((root / "bench").rglob("*.py"))
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if rel == "archive/actions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
            if isinstance(node, ast.alias):
                name = node.name.split(".")[-1]
            line = getattr(node, "lineno", 0)
            if name in GRANT_WRITERS:
                found.append(f"{rel}:{line}: {name}")
            elif name in GRANT_MODELS and rel not in GRANT_MODULES:
                found.append(f"{rel}:{line}: {name}")
            elif isinstance(node, ast.Call) and rel in GRANT_MODULES and _writes_a_grant(node):
                found.append(f"{rel}:{line}: {ast.unparse(node.func)}")
    return found


def _writes_a_grant(call: ast.Call) -> bool:
    """``<GrantModel>.objects.<write>(...)`` or ``<GrantModel>(...)``-then-save, spelled in one expression."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in GRANT_MODELS
    return (
        isinstance(func, ast.Attribute)
        and func.attr in WRITES
        and any(isinstance(n, ast.Name) and n.id in GRANT_MODELS for n in ast.walk(func.value))
    )


def test_study_grants_are_written_only_by_the_archive_actions():
    assert grant_code_outside_the_actions(ROOT) == []


def test_the_grant_scan_finds_a_grant_written_elsewhere(tmp_path, monkeypatch):
    from tests.pacs_cloud import test_import_graph

    monkeypatch.setattr(test_import_graph, "ROOT", tmp_path)
    for app in APPS:
        (tmp_path / app).mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "workflow" / "share.py").write_text(
        "from guardian.shortcuts import assign_perm\n"
        "from archive.models import StudyGroupObjectPermission\n"
        "def share(g, s):\n"
        "    assign_perm('archive.view_study', g, s)\n"
        "    StudyGroupObjectPermission.objects.filter(group=g).delete()\n"
    )
    (tmp_path / "archive" / "access.py").write_text(
        "from .models import StudyUserObjectPermission\n"
        "def read(u):\n"
        "    return StudyUserObjectPermission.objects.filter(user=u)\n"
        "def write(u, s):\n"
        "    StudyUserObjectPermission.objects.create(user=u, content_object=s)\n"
    )
    (tmp_path / "archive" / "actions.py").write_text("from guardian.shortcuts import assign_perm\n")
    found = grant_code_outside_the_actions(tmp_path)
    assert [f.split(": ")[0] for f in found] == [
        "archive/access.py:5",
        "workflow/share.py:1",
        "workflow/share.py:2",
        "workflow/share.py:4",
        "workflow/share.py:5",
    ], found
