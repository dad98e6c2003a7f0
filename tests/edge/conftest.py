"""Fixtures of the edge gateway tests."""

from tests.archive.conftest import storage_dir  # noqa: F401
