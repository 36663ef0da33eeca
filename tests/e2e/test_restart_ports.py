"""Issue 16: `modelgate up` restarted on other ports (`--issuer-port 0`) still serves the
published API: its policy names the issuer by the `issuer-url` named value, set at each start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.test_whole_stack import _modelgate
from tests.support import ROOT, wait_for


def _up(env: dict[str, str], home: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    up = subprocess.Popen(
        [sys.executable, "-m", "app", "up", "--panel-port", "0", "--issuer-port", "0",
         "--gateway-port", "0"],
        cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    endpoints_file = home / "endpoints.json"
    wait_for(lambda: endpoints_file.exists() or up.poll() is not None, 120, "endpoints.json")
    assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
    return up, json.loads(endpoints_file.read_text())


def slots_ready(home: Path) -> bool:
    """Whether this start's runtime serves every recorded deployment (a replica listening)."""
    try:
        pid = int((home / "run" / "runtime.ready").read_text())
        status = json.loads((home / "runtime" / "status.json").read_text())
    except (OSError, ValueError):
        return False
    deployments = status["deployments"].values()
    return status["pid"] == pid and bool(deployments) and all(
        d["replicas_ready"] >= 1 for d in deployments)


def _stop(up: subprocess.Popen[bytes]) -> None:
    up.send_signal(signal.SIGINT)
    try:
        assert up.wait(60) == 0
    except subprocess.TimeoutExpired:
        up.kill()
        raise


def test_a_restart_on_new_ports_keeps_scoring(tmp_path: Path) -> None:
    home = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(home)
    pipeline_file = tmp_path / "pipeline.yml"
    pipeline_file.write_text("model:\n  importance_repeats: 1\n")
    env["MODELGATE_PIPELINE_CONFIG"] = str(pipeline_file)

    up, first = _up(env, home)
    try:
        run = _modelgate(env, "pipeline", "run", timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        assert _modelgate(env, "score").returncode == 0
    finally:
        _stop(up)

    up, second = _up(env, home)
    try:
        assert second["issuer"] != first["issuer"]  # port 0: another issuer URL
        wait_for(lambda: slots_ready(home), 120, "the recorded slots to serve again")
        scored = _modelgate(env, "score")
        assert scored.returncode == 0, scored.stdout + scored.stderr
        assert json.loads(scored.stdout)["predictions"][0]["label"] in ("good", "bad")
    finally:
        _stop(up)
