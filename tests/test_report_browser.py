"""The report in a real browser (headless Chromium): clean load, embedded images decode, and the
checker itself flags a page that is not clean. Skipped where no Chromium is installed."""

from __future__ import annotations

import shutil

import pytest

import reports
from reports.browser_check import CANDIDATES, check_report
from tests.report_synthetic import make_results

pytestmark = pytest.mark.skipif(
    not any(shutil.which(name) for name in CANDIDATES),
    reason="no Chromium on PATH (reports/browser_check.sh installs Debian's chromium)",
)


def test_report_loads_clean_in_chromium(tmp_path):
    path = reports.build_report(make_results(depths=(1, 2), batches=(1,), modes=("training",)), tmp_path / "r.html")
    shot = tmp_path / "top.png"
    result = check_report(path, shot)
    assert result.clean, result
    assert result.sections == len(reports.SECTIONS)
    assert result.images == path.read_text().count("<img") and result.broken_images == 0
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_checker_flags_console_errors_and_outside_requests(tmp_path):
    page = tmp_path / "dirty.html"
    page.write_text('<!DOCTYPE html><title>d</title><img src="http://example.invalid/a.png">'
                    '<img src="missing.png"><script>console.error("boom")</script>')
    result = check_report(page)
    assert not result.clean
    assert any("boom" in line for line in result.console_errors)
    assert "http://example.invalid/a.png" in result.external_requests
    assert result.broken_images == 2 and result.failed_requests
