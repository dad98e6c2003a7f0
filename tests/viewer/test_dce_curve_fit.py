"""The DCE-MRI curve-fit API: the QIBA reference curves over real HTTP, models, delays and refusals."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import requests

from pacs_cloud.authentication import issue_token
from pacs_cloud.models import AuditEvent
from tests.conftest import api_client
from viewer.analysis.aif import parker_plasma_mM

URL = "/api/v1/analysis/dce/curve-fit/"
DRO = Path(__file__).parent / "data" / "qiba_tofts_dro.csv.gz"


def dro_curves() -> list[dict]:
    with gzip.open(DRO, "rt") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    return [
        {
            "label": r["label"],
            "ktrans": float(r["Ktrans"]),
            "ve": float(r["ve"]),
            "t": [float(v) for v in r["t"].split()],
            "ct": [float(v) for v in r["C"].split()],
            "ta": [float(v) for v in r["ta"].split()],
            "ca": [float(v) for v in r["ca"].split()],
        }
        for r in rows
    ]


def within_osipi_tolerance(fitted: dict, curve: dict) -> bool:
    """OSIPI's acceptance of a Tofts fit: Ktrans within 0.005 /min + 10 %, ve within 0.05."""
    return (
        abs(fitted["ktrans_per_min"] - curve["ktrans"]) <= 0.005 + 0.1 * curve["ktrans"]
        and abs(fitted["ve"] - curve["ve"]) <= 0.05
    )


def test_every_qiba_curve_is_fitted_within_the_osipi_tolerances_over_http(live_url, tenants):
    curves = dro_curves()
    assert len(curves) == 25
    _, key = issue_token(tenants.a.radiologist, name="dce")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    misses = []
    for curve in curves:
        answer = session.post(
            live_url + URL,
            json={
                "t": curve["t"],
                "ct": curve["ct"],
                "aif": {"t": curve["ta"], "ca": curve["ca"]},
                "model": "tofts",
                "fit_delay": False,
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        fitted = answer.json()
        assert fitted["units"]["ktrans_per_min"] == "1/min"
        assert fitted["kep_per_min"] == pytest.approx(fitted["ktrans_per_min"] / fitted["ve"], rel=1e-4)
        assert fitted["uncertainties"]["ktrans_per_min"] >= 0
        if not within_osipi_tolerance(fitted, curve):
            misses.append((curve["label"], curve["ktrans"], curve["ve"], fitted["ktrans_per_min"], fitted["ve"]))
    assert misses == []
    assert AuditEvent.objects.filter(action="analysis.dce.curve_fit", actor_id=tenants.a.radiologist.pk).count() == 25


def _forward(ca_t, ca, t, *, ktrans_per_min, ve, vp=0.0, delay_s=0.0):
    """Extended Tofts by direct discrete convolution, independent of the code under test."""
    grid = np.arange(0.0, t[-1] + 0.1, 0.1)
    cp = np.interp(grid - delay_s, ca_t, ca, left=0.0)
    kernel = (ktrans_per_min / 60.0) * np.exp(-(ktrans_per_min / 60.0 / ve) * grid)
    tissue = np.convolve(cp, kernel)[: len(grid)] * 0.1 + vp * cp
    return np.interp(t, grid, tissue)


@pytest.fixture
def client(tenants):
    return api_client(tenants.a.radiologist)


def parker_case():
    t = np.arange(0.0, 300.0, 2.0)
    ca_t = np.arange(0.0, 300.0, 0.5)
    ca = parker_plasma_mM(ca_t, bolus_arrival_s=10.0)
    return t, ca_t, ca


def test_extended_tofts_recovers_the_plasma_volume(client):
    t, ca_t, ca = parker_case()
    ct = _forward(ca_t, ca, t, ktrans_per_min=0.25, ve=0.3, vp=0.05)
    answer = client.post(
        URL,
        {"t": t.tolist(), "ct": ct.tolist(), "aif": {"t": ca_t.tolist(), "ca": ca.tolist()}, "model": "extended_tofts"},
        format="json",
    )
    assert answer.status_code == 200, answer.data
    assert answer.data["ktrans_per_min"] == pytest.approx(0.25, rel=0.05)
    assert answer.data["ve"] == pytest.approx(0.3, abs=0.02)
    assert answer.data["vp"] == pytest.approx(0.05, abs=0.005)
    assert answer.data["residual"]["r_squared"] > 0.999


def test_the_arterial_delay_is_found_with_the_population_aif(client):
    t, ca_t, ca = parker_case()
    ct = _forward(ca_t, ca, t, ktrans_per_min=0.2, ve=0.4, delay_s=6.0)
    body = {
        "t": t.tolist(),
        "ct": ct.tolist(),
        "aif": {"population": "parker", "bolus_arrival_s": 10.0},
        "model": "tofts",
        "fit_delay": True,
    }
    answer = client.post(URL, body, format="json")
    assert answer.status_code == 200, answer.data
    assert answer.data["delay_s"] == pytest.approx(6.0, abs=1.0)  # OSIPI's delay tolerance
    assert answer.data["ktrans_per_min"] == pytest.approx(0.2, rel=0.1)
    without = client.post(URL, {**body, "fit_delay": False}, format="json").data
    assert without["delay_s"] == 0.0
    assert without["residual"]["rmse_mM"] > 5 * answer.data["residual"]["rmse_mM"]


def test_patlak_and_two_compartment_exchange_answer_their_parameters(client):
    t, ca_t, ca = parker_case()
    # An uptake curve without backflux over the first minutes: what Patlak describes.
    ct = _forward(ca_t, ca, t, ktrans_per_min=0.1, ve=1e6, vp=0.04)
    patlak = client.post(
        URL,
        {"t": t.tolist(), "ct": ct.tolist(), "aif": {"t": ca_t.tolist(), "ca": ca.tolist()}, "model": "patlak"},
        format="json",
    ).data
    assert patlak["ktrans_per_min"] == pytest.approx(0.1, rel=0.05)
    assert patlak["vp"] == pytest.approx(0.04, abs=0.005)
    assert patlak["ve"] is None and patlak["units"] == {"ktrans_per_min": "1/min", "vp": "mL/mL", "delay_s": "s"}
    tissue = _forward(ca_t, ca, t, ktrans_per_min=0.2, ve=0.3, vp=0.05)
    two = client.post(
        URL,
        {"t": t.tolist(), "ct": tissue.tolist(), "aif": {"t": ca_t.tolist(), "ca": ca.tolist()}, "model": "2cxm"},
        format="json",
    ).data
    for name in ("fp_ml_per_100ml_per_min", "ps_per_min", "ve", "vp", "ktrans_per_min"):
        assert two[name] is not None and two[name] >= 0
    assert two["residual"]["r_squared"] > 0.99


GOOD = {"t": [0, 10, 20, 30, 40, 50, 60], "ct": [0, 0.1, 0.3, 0.4, 0.42, 0.41, 0.4], "model": "tofts"}
PARKER = {"population": "parker", "bolus_arrival_s": 5}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**GOOD, "aif": PARKER, "model": "gamma"}, "model", "not a valid choice"),
        ({**GOOD, "aif": PARKER, "ct": GOOD["ct"][:-1]}, "ct", "differ in length"),
        ({**GOOD, "aif": PARKER, "t": [0, 10, 10, 30, 40, 50, 60]}, "t", "increase strictly"),
        ({**GOOD, "aif": PARKER, "t": [-5, 10, 20, 30, 40, 50, 60]}, "t", "none negative"),
        ({**GOOD, "aif": PARKER, "t": [0, 10, 20], "ct": [0, 1, 2]}, "t", "at least"),
        ({**GOOD, "aif": PARKER, "ct": [0, 0, 0, 0, 0, 0, 0]}, "ct", "zero throughout"),
        ({**GOOD, "aif": PARKER, "ct": [0, 0.1, "x", 0.4, 0.42, 0.41, 0.4]}, "ct", "valid number"),
        ({**GOOD}, "aif", "required"),
        ({**GOOD, "aif": {}}, "aif", "population"),
        ({**GOOD, "aif": {"population": "bogus"}}, "aif", "not a valid choice"),
        ({**GOOD, "aif": {**PARKER, "t": [0, 60], "ca": [0, 1]}}, "aif", "not both"),
        ({**GOOD, "aif": {"t": [0, 60]}}, "aif", "both t and ca"),
        ({**GOOD, "aif": {"t": [0, 30, 60], "ca": [0, 1]}}, "aif", "differ in length"),
        ({**GOOD, "aif": {"t": [0, 30], "ca": [0, 1]}}, "aif", "cover"),
        ({**GOOD, "aif": {"t": [0, 60, 30], "ca": [0, 1, 2]}}, "aif", "increase strictly"),
        ({**GOOD, "aif": {"t": [0, 60], "ca": [0, 0]}}, "aif", "zero throughout"),
        ({**GOOD, "aif": {**PARKER, "hematocrit": 1.5}}, "aif", "less than or equal"),
        ({**GOOD, "aif": PARKER, "t": list(range(5000)), "ct": [0.1] * 5000}, "t", "no more than"),
    ],
    ids=[
        "unknown-model",
        "lengths-differ",
        "times-not-increasing",
        "negative-time",
        "too-few-samples",
        "flat-curve",
        "not-a-number",
        "no-aif",
        "empty-aif",
        "unknown-population",
        "measured-and-population",
        "aif-without-ca",
        "aif-lengths-differ",
        "aif-too-short",
        "aif-times-not-increasing",
        "aif-zero",
        "hematocrit-out-of-range",
        "too-many-samples",
    ],
)
def test_bad_input_is_refused_with_the_reason(client, body, field, reason):
    answer = client.post(URL, body, format="json")
    assert answer.status_code == 400
    assert field in answer.data
    assert reason in str(answer.data[field])


def test_it_answers_only_users_of_a_role_that_reads_images(tenants):
    body = {**GOOD, "aif": PARKER}
    assert api_client(tenants.a.institution_admin).post(URL, body, format="json").status_code == 403
    assert api_client(tenants.a.clinician).post(URL, body, format="json").status_code == 200
    from rest_framework.test import APIClient

    assert APIClient().post(URL, body, format="json").status_code in (401, 403)


def test_it_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"][URL]["post"]
    assert operation["operationId"] == "analysis_dce_curve_fit"
    assert "ktrans_per_min" in schema["components"]["schemas"]["DceCurveFit"]["properties"]
