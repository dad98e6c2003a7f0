import os
import subprocess

import pytest
from django.conf import settings
from django.db.backends.signals import connection_created

from archive.dimse import start_server
from archive.models import DicomNode
from tests.conftest import free_port

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture
def cloud_ae(tenants, transactional_db):
    DicomNode.objects.create(institution=tenants.a.institution, ae_title="ALPHA_CT")
    port = free_port()
    server = start_server("PACSCLOUD", "127.0.0.1", port)
    yield port
    server.shutdown()


def echoscu(port: int, calling: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "PACSCLOUD", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=30,
    )


def test_a_configured_modality_gets_an_echo(cloud_ae):
    assert echoscu(cloud_ae, "ALPHA_CT").returncode == 0


def test_an_unknown_calling_ae_is_rejected(cloud_ae):
    result = echoscu(cloud_ae, "STRANGER")
    assert result.returncode != 0
    assert "Rejected" in result.stderr + result.stdout


@pytest.fixture
def lasting_connections(monkeypatch):
    # The test settings close connections after each use (CONN_MAX_AGE 0); as deployed they last a minute.
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 60)


def test_associations_reuse_database_connections(lasting_connections, cloud_ae):
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(connection.alias)

    connection_created.connect(count)
    try:
        for _ in range(6):
            assert echoscu(cloud_ae, "ALPHA_CT").returncode == 0
    finally:
        connection_created.disconnect(count)
    # one association after another: one connection, lent to each in turn
    assert len(opened) <= 1


def test_a_deactivated_node_is_refused_at_its_next_association(cloud_ae):
    assert echoscu(cloud_ae, "ALPHA_CT").returncode == 0
    DicomNode.objects.filter(ae_title="ALPHA_CT").update(is_active=False)
    result = echoscu(cloud_ae, "ALPHA_CT")
    assert result.returncode != 0
    assert "Rejected" in result.stderr + result.stdout
