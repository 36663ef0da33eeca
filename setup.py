"""setuptools entry point: the project is described in pyproject.toml; this file only adds the
optional compiled gateway (app/gateway/compile.py), off unless MODELGATE_COMPILE_GATEWAY=1.

    MODELGATE_COMPILE_GATEWAY=1 pip install .      # gcc and the Python headers needed

With the flag, Cython becomes a build requirement (pip installs it into the isolated build
environment; with --no-build-isolation it must be installed already) and the wheel carries
extension modules beside the .py files. Without it the build is the plain, pure-Python one:
no Cython, no compiler.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _compile_module() -> ModuleType:
    """app/gateway/compile.py, loaded by path (the app package's dependencies are absent)."""
    spec = importlib.util.spec_from_file_location("_modelgate_gateway_compile",
                                                  ROOT / "app" / "gateway" / "compile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options() -> dict[str, Any]:
    if os.environ.get("MODELGATE_COMPILE_GATEWAY") != "1":
        return {}
    compile_module = _compile_module()
    if importlib.util.find_spec("Cython") is None:
        if "egg_info" not in sys.argv[1:]:
            # a build, not the question below: fail rather than build a pure-Python wheel
            raise SystemExit("MODELGATE_COMPILE_GATEWAY=1 needs Cython in the build "
                             "environment: pip install 'cython>=3' before pip install "
                             "--no-build-isolation, or let pip isolate the build (it then "
                             "installs Cython itself)")
        # setuptools' build backend asks for build requirements by running egg_info, and
        # reports setup_requires: pip installs Cython into the isolated build environment
        # and runs this file again, with Cython
        return {"setup_requires": ["cython>=3"]}
    # relative paths (setuptools refuses absolute ones); C files under build/ (git-ignored);
    # the C compiler runs on up to four cores
    return {"ext_modules": compile_module.extensions(Path("."),
                                                     Path("build", "gateway-cython", "c")),
            "options": {"build_ext": {"parallel": min(os.cpu_count() or 1, 4)}}}


setup(**_options())
