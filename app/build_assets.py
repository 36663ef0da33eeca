"""Build step (pyproject: tool.setuptools.cmdclass): copy templates, static and data into the
wheel as app/_assets/ so a plain install finds them (app.assets.asset_dir)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

ASSETS: tuple[str, ...] = ("templates", "static", "data")


class BuildPyWithAssets(build_py):
    """build_py, plus the top-level asset folders under app/_assets/."""

    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent.parent
        for name in ASSETS:
            target = Path(self.build_lib) / "app" / "_assets" / name
            shutil.copytree(root / name, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
