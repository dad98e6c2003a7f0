"""The technologists' pages through Django's test client."""

from __future__ import annotations

import pytest
from django.urls import reverse

from archive.models import Patient
from pacs_cloud.models import AuditEvent
from worklist.forms import pinyin
from worklist.models import Order

from .conftest import make_patient, today


@pytest.fixture
def tech_client(client, tenants):
    client.force_login(tenants.a.technologist)
    return client


def order_post(site, **extra):
    data = {
        "procedure": str(site.ct.pk),
        "station": str(site.ct_station.pk),
        "scheduled_date": today().isoformat(),
        "scheduled_time": "14:30",
        "priority": "routine",
        "referring_physician": "",
        "clinical_info": "Follow-up",
    }
    data.update(extra)
    return data


def test_pinyin_fills_the_latin_name_with_family_name_readings():
    assert pinyin("王", family=True) == "WANG"
    assert pinyin("小明") == "XIAOMING"
    assert pinyin("单", family=True) == "SHAN"  # not the everyday "dan"
    assert pinyin("曾", family=True) == "ZENG"


def test_a_patient_is_found_by_id_or_by_any_form_of_their_name(tech_client, sites):
    make_patient(sites["a"].institution, "WANG^XIAOMING=王^小明", patient_id="RCH-1")
    make_patient(sites["b"].institution, "WANG^XIAOMING=王^小明", patient_id="OTHER-1")
    for q in ("RCH-1", "小明", "wang xiaoming", "Wang"):
        page = tech_client.get(reverse("worklist-register-order"), {"q": q})
        assert "王小明 (WANG, XIAOMING)" in page.content.decode(), q
        assert "OTHER-1" not in page.content.decode()
    assert AuditEvent.objects.filter(action="worklist.patient.search").count() == 4


@pytest.mark.parametrize("q", ["张三", "三", "ZHANG, SAN", "张三 (ZHANG, SAN)", "zhang san", "ZHANG^SAN=张^三"])
def test_registration_finds_a_chinese_patient_by_the_full_name_and_as_the_pages_show_it(tech_client, sites, q):
    make_patient(sites["a"].institution, "ZHANG^SAN=张^三", patient_id="RCH-3")
    make_patient(sites["a"].institution, "ZHANG^SI=张^四", patient_id="RCH-4")
    page = tech_client.get(reverse("worklist-register-order"), {"q": q}).content.decode()
    assert "张三 (ZHANG, SAN)" in page, q
    assert "RCH-4" not in page, q


def test_registering_a_new_patient_by_chinese_characters_alone(tech_client, sites):
    data = order_post(sites["a"], **{"new-ideographic_family": "单", "new-ideographic_given": "小东", "new-sex": "M"})
    response = tech_client.post(reverse("worklist-register-order"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    order = Order.objects.get()
    assert order.patient.name == "SHAN^XIAODONG=单^小东"
    assert order.patient.patient_id.startswith("ACH")
    assert order.scheduled_time.strftime("%H:%M") == "14:30"
    assert response.url == reverse("worklist-show-order", args=[order.pk])


def test_registering_for_a_found_patient_keeps_one_record(tech_client, sites):
    patient = make_patient(sites["a"].institution, "LI^NA=李^娜", patient_id="RCH-9")
    response = tech_client.post(reverse("worklist-register-order"), order_post(sites["a"], patient=str(patient.pk)))
    assert response.status_code == 302
    assert Patient.objects.filter(institution=sites["a"].institution).count() == 1
    assert Order.objects.get().patient == patient


def test_a_likely_duplicate_is_shown_before_registering_again(tech_client, sites):
    import datetime as dt

    make_patient(sites["a"].institution, "LI^NA=李^娜", patient_id="RCH-9", birth_date=dt.date(1980, 1, 2))
    new = {"new-family_name": "li", "new-given_name": "na", "new-birth_date": "1980-01-02"}
    page = tech_client.post(reverse("worklist-register-order"), order_post(sites["a"], **new))
    assert page.status_code == 200
    assert "Already registered with this name and birth date" in page.content.decode()
    assert Order.objects.count() == 0
    again = tech_client.post(reverse("worklist-register-order"), order_post(sites["a"], register_anyway="1", **new))
    assert again.status_code == 302
    assert Patient.objects.count() == 2


def test_the_day_worklist_lists_the_institutions_exams(tech_client, sites, order_factory):
    mine = order_factory("a", name="ZHOU^JIE=周^杰")
    order_factory("b", name="OUTSIDER^ONE")
    page = tech_client.get(reverse("worklist-list-orders")).content.decode()
    assert "周杰 (ZHOU, JIE)" in page
    assert mine.accession_number in page
    assert "OUTSIDER" not in page
    fragment = tech_client.get(reverse("worklist-list-orders"), {"fragment": 1}).content.decode()
    assert fragment.startswith('<tbody id="order-rows">') and mine.accession_number in fragment


def test_cancel_needs_a_reason_and_is_recorded(tech_client, sites, order_factory):
    order = order_factory("a")
    url = reverse("worklist-cancel-order", args=[order.pk])
    tech_client.post(url, {"reason": "  "})
    assert Order.objects.get(pk=order.pk).state == Order.State.SCHEDULED
    tech_client.post(url, {"reason": "Patient declined contrast"})
    assert Order.objects.get(pk=order.pk).state == Order.State.CANCELLED
    page = tech_client.get(reverse("worklist-show-order", args=[order.pk])).content.decode()
    assert "Patient declined contrast" in page and "scheduled → cancelled" in page


def test_pages_are_closed_to_other_institutions_and_other_roles(client, tenants, sites, order_factory):
    order = order_factory("a")
    client.force_login(tenants.c.technologist)
    assert client.get(reverse("worklist-show-order", args=[order.pk])).status_code == 404
    assert client.post(reverse("worklist-arrive-order", args=[order.pk])).status_code == 404
    client.force_login(tenants.a.clinician)
    assert client.get(reverse("worklist-show-order", args=[order.pk])).status_code == 200
    assert client.get(reverse("worklist-register-order")).status_code == 403
    assert client.post(reverse("worklist-arrive-order", args=[order.pk])).status_code == 403
    client.force_login(tenants.a.institution_admin)
    assert client.get(reverse("worklist-list-orders")).status_code == 403  # an administrator sees no PHI
    assert Order.objects.get(pk=order.pk).state == Order.State.SCHEDULED


def test_an_institution_administrator_keeps_the_catalogue(client, tenants, sites):
    from archive.models import DicomNode
    from worklist.models import Procedure, Station

    client.force_login(tenants.a.institution_admin)
    response = client.post(
        reverse("worklist-add-procedure"),
        {"code": "DX-CHEST", "coding_scheme": "99LOCAL", "name": "Chest X-ray", "modality": "dx",
         "body_part": "CHEST", "duration_minutes": 5, "is_active": "on"},
    )  # fmt: skip
    assert response.status_code == 302
    assert Procedure.objects.get(code="DX-CHEST").modality == "DX"
    clash = client.post(reverse("worklist-add-procedure"), {"code": "DX-CHEST", "coding_scheme": "99LOCAL",
                        "name": "again", "modality": "DX", "duration_minutes": 5})  # fmt: skip
    assert "already in the catalogue" in clash.content.decode()
    node = DicomNode.objects.create(institution=sites["a"].institution, ae_title="ALPHA_DX")
    other = DicomNode.objects.create(institution=sites["b"].institution, ae_title="BRAVO_DX")
    page = client.get(reverse("worklist-add-station")).content.decode()
    assert "ALPHA_DX" in page and "BRAVO_DX" not in page and "ALPHA_CT" not in page  # free nodes of this institution
    client.post(reverse("worklist-add-station"), {"node": str(node.pk), "name": "DR room 1", "modality": "DX",
                "character_set": "GB18030", "is_active": "on"})  # fmt: skip
    assert Station.objects.get(node=node).character_set == "GB18030"
    refused = client.post(reverse("worklist-add-station"), {"node": str(other.pk), "name": "x", "modality": "DX"})
    assert refused.status_code == 200 and not Station.objects.filter(node=other).exists()
    assert AuditEvent.objects.filter(action="worklist.procedure.save").count() == 1
    client.force_login(tenants.a.technologist)
    assert client.get(reverse("worklist-show-catalogue")).status_code == 403


def test_a_started_exam_keeps_its_schedule_when_edited(tech_client, sites, order_factory):
    from worklist.actions import do_start_order

    order = order_factory("a")
    do_start_order(order, actor_label="test")
    url = reverse("worklist-edit-order", args=[order.pk])
    assert "only its priority" in tech_client.get(url).content.decode()
    moved = order_post(sites["a"], scheduled_time="18:00", priority="stat", procedure=str(sites["a"].mr.pk))
    assert tech_client.post(url, moved).status_code == 302
    order.refresh_from_db()
    assert order.priority == "stat"
    assert order.scheduled_time.strftime("%H:%M") == "10:00" and order.procedure == sites["a"].ct


def test_a_technologists_home_shows_todays_exams(tech_client, sites, order_factory):
    order = order_factory("a", name="ZHOU^JIE=周^杰", priority="stat")
    order_factory("b", name="OUTSIDER^TWO")
    page = tech_client.get(reverse("home")).content.decode()
    assert "Today&#x27;s exams" in page or "Today's exams" in page
    assert "周杰 (ZHOU, JIE)" in page and "STAT" in page and "OUTSIDER" not in page
    assert AuditEvent.objects.filter(action="worklist.order.list", detail__orders=[str(order.pk)]).exists()


def test_the_queue_page_corrects_a_patient_and_links_the_exam(tech_client, sites, order_factory, tmp_path, settings):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from archive.ingest import store_instance
    from pacs_cloud.lib.uids import new_uid
    from worklist.models import ReconciliationItem

    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    order = order_factory("a", name="SUN^LEI=孙^磊")
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "WRONG", "SUN^LEI", order.accession_number
    ds.save_as(tmp_path / "x.dcm")
    study = store_instance(tmp_path / "x.dcm", institution=sites["a"].institution).instance.series.study
    item = ReconciliationItem.objects.create(study=study, institution=sites["a"].institution)
    page = tech_client.get(reverse("worklist-show-reconciliation", args=[item.pk])).content.decode()
    assert 'value="WRONG"' in page  # the form starts from what the images say
    response = tech_client.post(
        reverse("worklist-correct-reconciliation", args=[item.pk]),
        {"fix-patient_id": order.patient.patient_id, "fix-family_name": "SUN", "fix-given_name": "LEI"},
    )
    assert response.status_code == 302
    assert Order.objects.get(pk=order.pk).study == study
    item.refresh_from_db()
    assert item.resolution == ReconciliationItem.Resolution.LINKED
