"""Tests that need a tool skip, with what to install, where it is missing; CI fails if anything skipped.

Each case runs pytest in a subprocess over a tiny suite that uses the real hooks
of ``tests/tools.py``, on a PATH without dcmtk and with Chromium looked for
where it is not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
import pytest

from tests import tools

tools.CHROMIUM = "/nonexistent/chromium"

from tests.tools import pytest_collection_modifyitems, pytest_sessionfinish  # noqa: E402


@pytest.fixture
def _chromium():
    return None
"""

TESTS = """
import pytest


@pytest.mark.dcmtk
def test_sends_with_storescu():
    pass


def test_drives_the_browser(_chromium):
    pass


def test_needs_nothing():
    pass
"""


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    dcmtk: x\n    browser: x\n    poppler: x\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(TESTS)
    (tmp_path / "bin").mkdir()
    return tmp_path


def run(suite: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PACS_CI_NO_SKIPS")}
    environ.update(PYTHONPATH=str(ROOT), PATH=str(suite / "bin"), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:django", "-p", "no:cacheprovider", *args],
        cwd=suite,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_test_needing_a_missing_tool_is_skipped_with_what_to_install(suite):
    result = run(suite)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped" in result.stdout
    assert "needs dcmtk (storescu, findscu…): apt-get install dcmtk" in result.stdout
    assert "needs Chromium at /nonexistent/chromium: apt-get install chromium" in result.stdout


def test_ci_fails_when_anything_was_skipped_and_names_it(suite):
    result = run(suite, PACS_CI_NO_SKIPS="1")
    assert result.returncode == 1, result.stdout
    assert "PACS_CI_NO_SKIPS=1: 2 test(s) skipped" in result.stdout
    assert "test_sample.py::test_sends_with_storescu: needs dcmtk" in result.stdout
    assert "test_sample.py::test_drives_the_browser: needs Chromium" in result.stdout


def test_ci_passes_when_nothing_was_skipped(suite):
    result = run(suite, "-k", "needs_nothing", PACS_CI_NO_SKIPS="1")
    assert result.returncode == 0, result.stdout
    assert "1 passed" in result.stdout


TOOL_USES = {
    "dcmtk": re.compile(r'"(storescu|findscu|echoscu|movescu|getscu)"|\b(dcmtk|storescu|echoscu|findscu)\('),
    "poppler": re.compile(r'"pdf(totext|toppm)"|\bpdf_text\('),
}


def test_every_test_module_that_runs_a_tool_carries_its_marker():
    """A tool used without its marker would fail, not skip, on a machine without the tool."""
    unmarked = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        source = path.read_text()
        for marker, use in TOOL_USES.items():
            if path != Path(__file__) and use.search(source) and f"pytest.mark.{marker}" not in source:
                unmarked.append(f"{path.relative_to(ROOT)} needs @pytest.mark.{marker}")
    assert unmarked == []
