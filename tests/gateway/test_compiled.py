"""The optional compiled gateway (app/gateway/compile.py) passes the pure-Python modules' tests.

The hot modules are compiled with Cython into a copy of the app package in a temporary folder
(never into the work tree), then a subprocess whose imports resolve to that copy checks that
every compiled module is the extension module and runs the end-to-end gateway tests against
them: the HTTP server (both loops, conformance), the upstream pool, and the whole gateway
(policy, tokens, rate limits, proxying, request log). Skipped without Cython or a C compiler,
except under CI=true, where the dev extra provides Cython and a skip would hide a regression.
About two minutes on two cores (compiling is ~30-45 s of it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from app.gateway import compiled
from app.gateway.compile import MODULES, build_copy
from tests.support import ROOT

# the gateway's end-to-end tests: every compiled module is on their path
SUBSET = ("test_http_server.py", "test_http_conformance.py", "test_upstream.py",
          "test_gateway.py", "test_policy_serving.py")

# Run in the subprocess: import the compiled modules first (sys.modules then holds them for
# every test), report where they come from, then run the tests. --import-mode=append keeps
# pytest from putting the work tree ahead of the copy on sys.path (the tests stay in the tree).
RUNNER = """
import importlib, json, sys
import pytest
import app.gateway
files = {name: importlib.import_module("app.gateway." + name).__file__ for name in %(modules)r}
print("MODULES " + json.dumps({"files": files, "compiled": app.gateway.compiled()}), flush=True)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--import-mode=append", *%(tests)r]))
"""


def _missing_toolchain() -> str | None:
    """Why the compiled build cannot run here (None: it can)."""
    if importlib.util.find_spec("Cython") is None:
        return "Cython is not installed (pip install -e '.[dev]' installs it)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "the Python headers (Python.h) are not installed"
    return None


@pytest.fixture(scope="module")
def compiled_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the app package with the gateway's hot modules compiled."""
    reason = _missing_toolchain()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the compiled gateway must be tested in CI: {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("compiled-gateway")
    done = build_copy(ROOT, out, jobs=min(os.cpu_count() or 1, 4))
    assert [p.name.split(".")[0] for p in done] == sorted(MODULES)
    return out


@pytest.mark.timeout(600)
def test_the_compiled_modules_pass_the_gateway_tests(compiled_copy: Path) -> None:
    tests = [str(ROOT / "tests" / "gateway" / name) for name in SUBSET]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(compiled_copy), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER % {"modules": MODULES, "tests": tests}],
        cwd=compiled_copy, env=env, capture_output=True, text=True, timeout=540, check=False)
    output = done.stdout + done.stderr
    line = next((x for x in done.stdout.splitlines() if x.startswith("MODULES ")), None)
    assert line is not None, output
    report = json.loads(line.removeprefix("MODULES "))
    for name, file in report["files"].items():
        assert Path(file).is_relative_to(compiled_copy), (name, file)
        assert file.endswith(".so"), (name, file)
    assert report["compiled"] == list(MODULES)
    assert done.returncode == 0, output[-5000:]
    assert " passed" in done.stdout and " failed" not in done.stdout, output[-5000:]


def test_the_pure_python_modules_are_the_fallback() -> None:
    """Without extension modules beside them, the .py files are what runs (this process, unless
    an in-place build is present in the tree)."""
    in_place = {p.name.split(".")[0] for p in (ROOT / "app" / "gateway").iterdir()
                if p.suffix == ".so"}
    assert set(compiled()) == in_place & set(MODULES)
