"""Fixtures of the isolation harness: the registry and every institution's objects."""

import pytest

from .harness import build_world
from .registry import load_registrations


@pytest.fixture
def registry():
    return load_registrations()


@pytest.fixture
def world(tenants, registry, settings, tmp_path):
    """Institutions a, b, c with a user in every role and one of every registered object kind."""
    settings.STORAGE_URL = f"file://{tmp_path / 'objects'}"
    settings.EXIT_EXPORT_DIR = str(tmp_path / "exports")
    return build_world(tenants, registry)
