"""What an Azure ML training job runs: modelgate's own training code as a code asset, and an
environment with the packages it needs.

- **Code**: a snapshot of ``app/ml`` (with a stub ``app/__init__.py``: the panel's factory and
  Flask are not needed to train) plus ``config.json`` (the ``model:`` settings), registered as
  the code asset ``modelgate-training-code`` whose version is the snapshot's content hash. A
  snapshot Azure ML already holds is reused without uploading; a new one is uploaded by the SDK
  to the workspace's default storage (that upload goes to Blob Storage directly, not through
  the clients' ``transport=``; the offline tests catch it at the ``requests`` level).
- **Environment**: ``modelgate-training``, Azure ML's Ubuntu base image with a conda file that
  pins the worker's own versions of Python, scikit-learn, pandas, numpy, scipy, joblib,
  cloudpickle and mlflow-skinny (the pickled pipeline must load where it is served), plus
  azureml-mlflow (MLflow logging into the workspace). Its version is the spec's content hash, so
  Azure ML builds the image once per set of versions.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CODE_NAME = "modelgate-training-code"
ENVIRONMENT_NAME = "modelgate-training"
# Azure ML's maintained Ubuntu base for command jobs (conda on the PATH); the conda file adds
# the rest. Images: https://github.com/Azure/AzureML-Containers
BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
# Pinned to the worker's versions: the model is pickled where it trains and unpickled where
# the scoring image (built from the same project) serves it.
PINNED_PACKAGES: tuple[str, ...] = ("scikit-learn", "pandas", "numpy", "scipy", "joblib",
                                    "cloudpickle", "mlflow-skinny")
# Not installed on workers; lets MLflow inside the job log to the workspace's tracking store.
UNPINNED_PACKAGES: tuple[str, ...] = ("azureml-mlflow",)
CONFIG_FILE = "config.json"
_STUB_INIT = ('"""modelgate\'s training code as an Azure ML job runs it (app/ml only; the '
              'panel is not part of this snapshot)."""\n')


@dataclass(frozen=True)
class CodeSnapshot:
    """A staged code folder and its content-hash version."""

    path: Path
    version: str


def stage_code(dest: Path, training_config: Mapping[str, Any]) -> CodeSnapshot:
    """Copy the training code and the ``model:`` settings into ``dest`` (created).

    The version is a hash of every file's path and bytes, so the same code and settings give
    the same version on every worker.
    """
    import app.ml

    source = Path(app.ml.__file__).resolve().parent
    (dest / "app" / "ml").mkdir(parents=True)
    (dest / "app" / "__init__.py").write_text(_STUB_INIT, encoding="utf-8")
    for module in sorted(source.glob("*.py")):
        shutil.copyfile(module, dest / "app" / "ml" / module.name)
    (dest / CONFIG_FILE).write_text(json.dumps(dict(training_config), sort_keys=True, indent=2),
                                    encoding="utf-8")
    return CodeSnapshot(dest, _tree_hash(dest)[:20])


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def conda_spec() -> dict[str, Any]:
    """The training environment's conda file (the worker's pinned versions)."""
    python = ".".join(platform.python_version_tuple()[:2])
    pins = []
    for dist in PINNED_PACKAGES:
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pins.append(dist)
    return {
        "name": ENVIRONMENT_NAME,
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip",
                         {"pip": [*pins, *UNPINNED_PACKAGES]}],
    }


def environment_version(spec: Mapping[str, Any]) -> str:
    """The environment's version: a hash of its image and conda file."""
    text = json.dumps({"image": BASE_IMAGE, "conda": spec}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
