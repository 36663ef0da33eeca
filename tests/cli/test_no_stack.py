"""Every CLI command without a reachable stack says what it looked for and what to run: exit 2,
no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.identity_support import free_port
from tests.support import ROOT

COMMANDS = [("jobs",), ("jobs", "show", "j1"), ("jobs", "cancel", "j1"), ("audit", "verify"),
            ("audit", "export"), ("token",), ("score",), ("pipeline", "run"), ("provision",),
            ("train",), ("deploy",), ("publish",)]


def _run(args: tuple[str, ...], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=str(cwd),
                          env={**clean, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_new_terminal_without_modelgate_home(args: tuple[str, ...], tmp_path: Path) -> None:
    result = _run(args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "instance") in result.stderr
    assert "MODELGATE_HOME is not set" in result.stderr
    assert "modelgate up" in result.stderr
    assert not (tmp_path / "instance").exists()  # looking created nothing


@pytest.mark.parametrize("args", [("token",), ("score",), ("pipeline", "run"), ("train",)],
                         ids=" ".join)
def test_a_home_whose_stack_has_stopped(args: tuple[str, ...], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dead = free_port()
    (home / "endpoints.json").write_text(json.dumps({
        "panel": f"http://127.0.0.1:{dead}", "issuer": f"https://127.0.0.1:{dead}/local",
        "gateway": f"https://127.0.0.1:{dead}", "ca_bundle": None}))
    (home / "dev-credentials.json").write_text(json.dumps(
        {"users": {}, "clients": {"modelgate-ci": {"secret": "s3cret-value", "roles": []}}}))
    result = _run(args, tmp_path, MODELGATE_HOME=str(home))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{dead}" in result.stderr and "cannot be reached" in result.stderr
    assert "modelgate up" in result.stderr
    assert "s3cret-value" not in result.stderr + result.stdout
