"""`git status` is clean after `python -m pytest`: a run that changes the work tree fails, and
the browser tests write their screenshots outside it unless asked to refresh them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.shots import screenshot_path
from tests.support import ROOT

INNER = """
from pathlib import Path


def test_inner():
    {body}
"""


def _run_inner(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run one test in a pytest session of its own, with this suite's conftest as a plugin."""
    test = tmp_path / "test_inner.py"
    test.write_text(INNER.format(body=body))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-q", str(test)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_a_run_that_changes_the_work_tree_fails(tmp_path: Path) -> None:
    probe = ROOT / f"work-tree-probe-{uuid.uuid4().hex[:8]}.txt"
    try:
        clean = _run_inner(tmp_path, "assert True")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        dirty = _run_inner(tmp_path, f"Path({str(probe)!r}).write_text('left behind')")
        assert probe.exists()
        assert dirty.returncode == 1, dirty.stdout + dirty.stderr
        assert "1 passed" in dirty.stdout
        assert f"the tests changed the work tree: ?? {probe.name}" in dirty.stdout
    finally:
        probe.unlink(missing_ok=True)


def test_screenshots_go_outside_the_work_tree_unless_refreshed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODELGATE_REFRESH_SCREENSHOTS", raising=False)
    monkeypatch.delenv("MODELGATE_SCREENSHOTS_DIR", raising=False)
    assert not screenshot_path("dashboard-live.png").is_relative_to(ROOT)
    monkeypatch.setenv("MODELGATE_SCREENSHOTS_DIR", str(tmp_path))
    assert screenshot_path("dashboard-live.png") == tmp_path / "dashboard-live.png"
    monkeypatch.setenv("MODELGATE_REFRESH_SCREENSHOTS", "1")
    assert screenshot_path("dashboard-live.png") == (
        ROOT / "docs" / "screenshots" / "dashboard-live.png")
