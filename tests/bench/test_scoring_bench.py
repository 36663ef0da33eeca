"""bench/scoring_bench.py runs as documented: `mlflow models serve` works without its venv on
PATH, and a failing MLflow side keeps the figures already measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def _bench(mlflow_python: str) -> subprocess.CompletedProcess[str]:
    # PATH without this venv's bin: `mlflow models serve` execs `uvicorn` by name from there.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH="/usr/bin:/bin", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bench.scoring_bench", "--duration", "0.5",
                           "--concurrency", "1", "--mlflow-python", mlflow_python],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)


def test_mlflow_is_measured_when_its_venv_is_not_on_path() -> None:
    # This venv has mlflow-skinny with its serving dependencies (uvicorn, fastapi).
    result = _bench(sys.executable)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| modelgate | 1 |" in result.stdout
    assert "| mlflow | 1 |" in result.stdout
    assert "throughput ratio at c=1" in result.stdout


def test_a_failing_mlflow_side_keeps_the_figures_already_measured(tmp_path: Path) -> None:
    without_mlflow = "/usr/bin/python3"
    if not Path(without_mlflow).exists():
        pytest.skip("no system python3 without mlflow")
    result = _bench(without_mlflow)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| modelgate | 1 |" in result.stdout
    assert "mlflow not measured" in result.stdout
    assert "| mlflow | 1 |" not in result.stdout
