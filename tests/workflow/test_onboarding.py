"""The set-up checklist: catalogue import from CSV, the C-ECHO test, routing templates, edge enrolment, access."""

from __future__ import annotations

import shlex

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from archive.models import DicomNode
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client, free_port, web_client
from workflow.actions import current_policy
from worklist.models import Procedure

GOOD_CSV = "code,name,modality,body_part,duration_minutes\nCT001,胸部CT平扫,CT,CHEST,15\nMR010,头颅MRI,mr,HEAD,30\n"
BAD_CSV = (
    "code,name,modality,body_part,duration_minutes\n"
    "CT001,胸部CT平扫,CT,CHEST,15\n"
    ",无代码,CT,,\n"
    "CT001,重复代码,CT,,\n"
    "US1,腹部超声,,ABDOMEN,abc\n"
    "XR1," + "长" * 65 + ",DX,CHEST,10\n"
)


def upload(client, institution, text: str, encoding: str = "utf-8"):
    return client.post(
        f"/api/v1/onboarding/{institution.pk}/procedures/",
        {"file": SimpleUploadedFile("catalogue.csv", text.encode(encoding), content_type="text/csv")},
        format="multipart",
    )


def test_a_gb18030_catalogue_with_chinese_names_is_imported_and_updated_by_code(tenants):
    admin = api_client(tenants.a.institution_admin)
    answer = upload(admin, tenants.a.institution, GOOD_CSV, "gb18030")
    assert answer.status_code == 201, answer.content
    assert answer.json() == {"created": ["CT001", "MR010"], "updated": [], "encoding": "GB18030"}
    rows = {
        p.code: (p.name, p.modality, p.body_part) for p in Procedure.objects.filter(institution=tenants.a.institution)
    }
    assert rows == {"CT001": ("胸部CT平扫", "CT", "CHEST"), "MR010": ("头颅MRI", "MR", "HEAD")}
    again = upload(admin, tenants.a.institution, "\ufeffcode,name,modality\nCT001,胸部CT增强,CT\n")
    assert again.json() == {"created": [], "updated": ["CT001"], "encoding": "UTF-8"}
    assert Procedure.objects.get(institution=tenants.a.institution, code="CT001").name == "胸部CT增强"
    assert AuditEvent.objects.filter(action="worklist.procedure.imported").count() == 2


def test_bad_rows_are_named_and_nothing_is_imported(tenants):
    answer = upload(api_client(tenants.a.institution_admin), tenants.a.institution, BAD_CSV)
    assert answer.status_code == 400
    found = [(e["line"], e["column"]) for e in answer.json()["errors"]]
    assert found == [(3, "code"), (4, "code"), (5, "modality"), (5, "duration_minutes"), (6, "name")]
    assert "line 2" in answer.json()["errors"][1]["message"]
    assert not Procedure.objects.exists()
    header = upload(api_client(tenants.a.institution_admin), tenants.a.institution, "code,title\nX,Y\n")
    assert "missing name, modality" in header.json()["errors"][0]["message"]
    # The page shows the same rows.
    page = web_client(tenants.a.institution_admin).post(
        "/onboarding/",
        {"step": "procedures", "file": SimpleUploadedFile("c.csv", BAD_CSV.encode("gb18030"))},
    )
    assert page.status_code == 400 and "import-errors" in page.content.decode() and not Procedure.objects.exists()


def test_the_echo_of_a_node_nobody_answers_fails_and_is_audited(tenants):
    node = DicomNode.objects.create(
        institution=tenants.a.institution, ae_title="ALPHA_US", host="127.0.0.1", port=free_port()
    )
    answer = api_client(tenants.a.institution_admin).post(
        f"/api/v1/onboarding/{tenants.a.institution.pk}/dicom-nodes/{node.pk}/echo/"
    )
    assert answer.status_code == 200
    assert answer.json()["ok"] is False and "No DICOM answer" in answer.json()["message"]
    event = AuditEvent.objects.get(action="archive.dicomnode.echo")
    assert (event.outcome, event.object_id) == ("failure", str(node.pk))
    foreign = api_client(tenants.b.institution_admin).post(
        f"/api/v1/onboarding/{tenants.b.institution.pk}/dicom-nodes/{node.pk}/echo/"
    )
    assert foreign.status_code == 404


def test_routing_starts_from_a_template_and_the_edge_command_carries_its_token(tenants):
    admin = api_client(tenants.a.institution_admin)
    base = f"/api/v1/onboarding/{tenants.a.institution.pk}"
    assert admin.post(f"{base}/routing-policy/", {"template": "pool"}, format="json").status_code == 400
    answer = admin.post(f"{base}/routing-policy/", {"template": "own_stat"}, format="json")
    assert answer.status_code == 201 and answer.json()["version"] == 1
    assert current_policy(tenants.a.institution).definition["rules"][0]["sla_minutes"] == {"stat": 30}
    enrolled = admin.post(f"{base}/edge/", {"name": "放射科服务器"}, format="json").json()
    words = shlex.split(enrolled["command"])
    assert words[:3] == ["PACS_ROLE=edge", "CLOUD_URL=http://testserver", f"EDGE_TOKEN={enrolled['token']}"]
    assert words[3:] == ["python", "manage.py", "edge_gateway"]
    status = admin.get(f"{base}/").json()
    done = {s["key"]: s["done"] for s in status["steps"]}
    assert done == {
        "modalities": False,
        "procedures": False,
        "users": True,  # the fixture's members
        "routing": True,
        "edge": False,  # enrolled, not heard from yet
        "test_image": False,
    }
    assert status["edge_connected"] is False and status["complete"] is False


@pytest.mark.parametrize("who", ["technologist", "radiologist"])
def test_only_the_institution_admin_sees_the_checklist(tenants, who):
    user = getattr(tenants.a, who)
    assert web_client(user).get("/onboarding/").status_code == 404
    assert api_client(user).get(f"/api/v1/onboarding/{tenants.a.institution.pk}/").status_code == 404
    page = web_client(tenants.a.institution_admin).get("/onboarding/")
    assert page.status_code == 200 and "Set up Alpha County Hospital" in page.content.decode()
