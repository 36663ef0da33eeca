"""A plain (non-editable) install works: build the wheel, install it into a fresh venv outside
the checkout, start `modelgate up`, run the pipeline and score through the gateway."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support import ROOT, wait_for

pytestmark = pytest.mark.e2e

SOURCES = ("app", "workers", "templates", "static", "data", "pyproject.toml", "README.md")


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the build leaves nothing in the checkout."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, cwd=tmp, timeout=600)
    return next(out.glob("modelgate-*.whl"))


def _venv(tmp: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed; its dependencies come from this interpreter's
    site-packages (a .pth line), so the test needs no download of them."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "-q", str(wheel)], check=True, cwd=tmp, env=clean, timeout=300)
    # Only now: before the install, pip would take the outer (editable) modelgate as installed.
    purelib = subprocess.run([str(python), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "outer-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_installs_starts_runs_the_pipeline_and_scores(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    venv = _venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"  # not the checkout: nothing may resolve to the sources
    work.mkdir()
    home = work / "instance"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MODELGATE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MODELGATE_HOME=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import app, app.assets as a; print(app.__file__); "
                            "print(a.asset_dir('templates'))"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    module, templates = where.stdout.split()
    assert module.startswith(str(venv)) and templates.startswith(str(venv)), where.stdout

    modelgate = str(venv / "bin" / "modelgate")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([modelgate, "up", "--panel-port", "0", "--issuer-port", "0",
                           "--gateway-port", "0"], cwd=work, env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (home / "endpoints.json").exists() or up.poll() is not None, 120,
                 "endpoints.json")
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        run = subprocess.run([modelgate, "pipeline", "run", "--timeout", "900"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=960)
        assert run.returncode == 0, run.stdout + run.stderr
        scored = subprocess.run([modelgate, "score"], cwd=work, env=env, capture_output=True,
                                text=True, timeout=120)
        assert scored.returncode == 0, scored.stdout + scored.stderr
        answer = json.loads(scored.stdout)
        assert answer["predictions"][0]["label"] in ("good", "bad")
        assert answer["model"]["name"] == "german-credit"
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        log.close()
