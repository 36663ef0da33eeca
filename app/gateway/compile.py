"""The gateway's optional compiled build: its hot modules through Cython 3, in pure-Python mode.

    python -m app.gateway.compile --inplace     # extension modules beside the .py files
    python -m app.gateway.compile --out DIR     # DIR/app: a copy of the package, compiled
    python -m app.gateway.compile --clean       # remove the in-place extension modules

The .py files stay the source and the fallback: CPython's import system prefers an extension
module (``http.cpython-311-x86_64-linux-gnu.so``) to ``http.py`` in the same folder, so a
build changes which code runs without changing the package, and removing the .so files (or
never building them) gives the pure-Python gateway, which passes the same tests
(tests/gateway/test_compiled.py runs a subset against the compiled modules). An in-place
build goes stale when a .py file changes after it: build again, or --clean.

``pip install .`` builds the same modules when MODELGATE_COMPILE_GATEWAY=1 (setup.py); by
default nothing is compiled and neither Cython nor a C compiler is needed. At run time
``app.gateway.compiled()`` names the modules that run compiled (the gateway logs it at start).

This module imports only the standard library at the top: setup.py loads it by path, before
the project's dependencies exist, and Cython and setuptools are imported when a build runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

#: the modules compiled (app/gateway/<name>.py): the request path, the upstream client, the
#: policy pipeline and its compiled plan, token checks, rate-limit leases, the request log
MODULES: tuple[str, ...] = ("http", "upstream", "proxy", "plan", "jwt", "ratelimit",
                            "observability")
# Conservative: Python 3 semantics; binding functions keep signatures, introspection and
# monkeypatching working; annotations are not turned into C types (a `float` annotation would
# become a C double that refuses None or a stand-in object), so semantics stay Python's.
DIRECTIVES: dict[str, Any] = {"language_level": 3, "binding": True,
                              "annotation_typing": False}
# what extension modules' file names end with (clean() removes any; built() counts only the
# ones this interpreter imports, e.g. ".cpython-311-x86_64-linux-gnu.so")
_EXT_SUFFIXES = (".so", ".pyd")


def sources(root: Path) -> list[tuple[str, Path]]:
    """(module name, source file) of every compiled module under root (the folder of app/)."""
    return [(f"app.gateway.{name}", root / "app" / "gateway" / f"{name}.py") for name in MODULES]


def extensions(root: Path, build_dir: Path, *, force: bool = False,
               jobs: int | None = None) -> list[Any]:
    """Cythonize MODULES under root (C files go to build_dir); setuptools Extension objects.

    Raises ImportError when Cython is missing.
    """
    from Cython.Build import cythonize
    from setuptools import Extension

    exts = [Extension(name, [str(path)]) for name, path in sources(root)]
    return list(cythonize(exts, build_dir=str(build_dir), compiler_directives=DIRECTIVES,
                          force=force, quiet=True, nthreads=jobs or 0))


def _extension_files(root: Path) -> list[Path]:
    folder = root / "app" / "gateway"
    return sorted(p for name in MODULES for p in folder.glob(f"{name}.*")
                  if p.suffix in _EXT_SUFFIXES)


def built(root: Path) -> list[Path]:
    """The extension modules of MODULES under root (in place or in a copy) that this
    interpreter would import."""
    suffixes = tuple(EXTENSION_SUFFIXES)
    return [p for p in _extension_files(root) if p.name.endswith(suffixes)]


def clean(root: Path) -> list[Path]:
    """Remove the extension modules of MODULES under root (any interpreter's); returns them."""
    removed = _extension_files(root)
    for path in removed:
        path.unlink()
    return removed


def build_inplace(root: Path, *, jobs: int = 2, force: bool = False) -> list[Path]:
    """Compile MODULES beside their .py files under root; returns the extension modules.

    C files and objects go to root/build/gateway-cython (reused by the next build).
    """
    from setuptools import Distribution

    temp = Path("build", "gateway-cython")
    # relative paths throughout: in-place targets are found from the working directory, and
    # the C files mirror the sources' relative paths under temp
    with contextlib.chdir(root):
        dist = Distribution({"name": "modelgate-gateway-compiled",
                             "ext_modules": extensions(Path("."), temp / "c", force=force,
                                                       jobs=jobs),
                             "script_name": "app.gateway.compile"})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True  # type: ignore[attr-defined]
        cmd.build_temp = str(temp / "obj")  # type: ignore[attr-defined]
        cmd.build_lib = str(temp / "lib")  # type: ignore[attr-defined]
        cmd.parallel = jobs  # type: ignore[attr-defined]
        cmd.force = force  # type: ignore[attr-defined]
        dist.run_command("build_ext")
    return built(root)


def copy_package(root: Path, out: Path) -> Path:
    """Copy root/app to out/app (no caches, C files or extension modules); returns out/app."""
    target = out / "app"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(root / "app", target, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "*.so", "*.pyd", "*.c"))
    return target


def build_copy(root: Path, out: Path, *, jobs: int = 2) -> list[Path]:
    """A compiled copy of the app package in out/app (for tests and benchmarks): the tree at
    root is left as it is. Returns the extension modules."""
    out.mkdir(parents=True, exist_ok=True)
    copy_package(root, out)
    return build_inplace(out, jobs=jobs)


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build in place, into a copy, or clean."""
    parser = argparse.ArgumentParser(prog="python -m app.gateway.compile",
                                     description="Compile the gateway's hot modules with "
                                     "Cython (optional; the .py files stay the fallback).")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--inplace", action="store_true",
                      help="build the extension modules beside the .py files")
    mode.add_argument("--out", type=Path, metavar="DIR",
                      help="copy the app package to DIR/app and compile the copy")
    mode.add_argument("--clean", action="store_true",
                      help="remove the in-place extension modules")
    parser.add_argument("--jobs", "-j", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--force", action="store_true", help="cythonize even if up to date")
    args = parser.parse_args(argv)
    root = _repo_root()
    if args.clean:
        for path in clean(root):
            print(f"removed {path.relative_to(root)}")
        return 0
    started = time.monotonic()
    try:
        if args.out is not None:
            done = build_copy(root, args.out.resolve(), jobs=args.jobs)
        else:
            done = build_inplace(root, jobs=args.jobs, force=args.force)
    except ImportError as exc:
        print(f"Cython is needed to compile the gateway ({exc}): pip install 'cython>=3'",
              file=sys.stderr)
        return 2
    for path in done:
        print(path)
    print(f"compiled {len(done)} of {len(MODULES)} modules in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return 0 if len(done) == len(MODULES) else 1


if __name__ == "__main__":
    sys.exit(main())
