"""Tests that drive an outside tool say so, and CI refuses to pass with any test skipped.

A test that runs dcmtk, Chromium or poppler carries the tool's marker
(``dcmtk``, ``browser``, ``poppler``; a test that asks for the browser fixture
gets ``browser`` on its own). On a machine without the tool it shows as skipped
with what to install, as the PostgreSQL and S3 tests do without their servers.
With ``PACS_CI_NO_SKIPS=1`` (``.ci/run`` sets it) a run in which anything was
skipped fails, listing each skipped test and why.

Plain pytest hooks, no Django: ``tests/conftest.py`` re-exports them.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
DCMTK_TOOLS = ("storescu", "findscu", "echoscu", "movescu", "getscu")


def _on_path(*names: str) -> bool:
    return all(shutil.which(name) for name in names)


def missing_tools() -> dict[str, str]:
    """Each tool marker whose tool this machine lacks, with the reason a skipped test shows."""
    missing = {}
    if not _on_path(*DCMTK_TOOLS):
        missing["dcmtk"] = "needs dcmtk (storescu, findscu…): apt-get install dcmtk"
    if not os.access(CHROMIUM, os.X_OK):
        missing["browser"] = f"needs Chromium at {CHROMIUM}: apt-get install chromium"
    if not _on_path("pdftotext"):
        missing["poppler"] = "needs poppler-utils (pdftotext): apt-get install poppler-utils"
    if not _on_path("dciodvfy"):
        missing["dicom3tools"] = "needs dicom3tools (dciodvfy): apt-get install dicom3tools"
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_tools()
    for item in items:
        if "_chromium" in getattr(item, "fixturenames", ()) and item.get_closest_marker("browser") is None:
            item.add_marker(pytest.mark.browser)
        for marker, reason in missing.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PACS_CI_NO_SKIPS") != "1" or hasattr(session.config, "workerinput"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if not skipped:
        return
    reporter.write_line("")
    reporter.write_line(f"PACS_CI_NO_SKIPS=1: {len(skipped)} test(s) skipped; every test must run here:", red=True)
    for report in skipped:
        reporter.write_line(f"  {report.nodeid}: {_skip_reason(report)}", red=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
