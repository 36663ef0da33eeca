"""Provision and tear down the local workspace in MODELGATE_HOME, idempotently by name.

Provisioning creates (or finds) the workspace record ``workspace.json``, the instance folders,
the MLflow experiment, the registered dataset version, and the runtime's and gateway's
settings files (``runtime/settings.json``, ``gateway/settings.json``). Teardown removes the
workspace record, the settings files and the experiment (MLflow deletes softly, so its runs
stay restorable) and the folders left empty; registered dataset versions, model versions and
model packages are kept, because model lineage points at them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.backends.base import (
    BackendError,
    Progress,
    ProvisionResult,
    ProvisionSpec,
    ResourceConflict,
    TransientBackendError,
)
from app.pipeline_config import PipelineConfig, PipelineConfigError, parse_pipeline_config

logger = logging.getLogger(__name__)

WORKSPACE_FILE = "workspace.json"
FOLDERS: tuple[str, ...] = ("datasets", "mlflow", "models", "runtime", "gateway", "logs")
RUNTIME_SETTINGS = Path("runtime") / "settings.json"
GATEWAY_SETTINGS = Path("gateway") / "settings.json"


@dataclass
class _Tally:
    """Items found and created as provisioning goes."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def add(self, item: str, state: str) -> None:
        {"created": self.created, "existing": self.existing, "updated": self.updated}[
            state].append(item)


def _config(spec: ProvisionSpec) -> PipelineConfig:
    try:
        return parse_pipeline_config(spec.settings)
    except PipelineConfigError as exc:
        raise BackendError(f"invalid pipeline configuration: {exc}") from None


def _write_json(path: Path, data: Mapping[str, Any]) -> str:
    """Write ``data`` atomically unless the file already holds it; return what happened."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        state = "created"
    else:
        if current == text:
            return "existing"
        state = "updated"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old or the new file, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return state


def _read_workspace(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((home / WORKSPACE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BackendError(f"{home / WORKSPACE_FILE} is unreadable: {exc}") from None
    return data if isinstance(data, dict) else None


def runtime_settings(config: PipelineConfig, environments: tuple[str, ...]) -> dict[str, Any]:
    """Return the local runtime's settings file content."""
    return {
        "workspace": config.workspace.name,
        "host": config.runtime.host,
        "ready_timeout_seconds": config.runtime.ready_timeout_seconds,
        "environments": {
            name: {"replicas": env.replicas, "cpu": env.cpu, "memory_mb": env.memory_mb}
            for name in environments for env in (config.environment(name),)
        },
    }


def gateway_settings(config: PipelineConfig, environments: tuple[str, ...]) -> dict[str, Any]:
    """Return the gateway's settings file content (what the publish job will use)."""
    return {
        "workspace": config.workspace.name,
        "api_name": config.gateway.api_name,
        "paths": {name: config.gateway.path_for(name) for name in environments},
        "rate_limit_per_minute": config.gateway.rate_limit_per_minute,
        "key_rotation_days": config.keys.rotation_days,
    }


def provision(home: Path, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
    """Create what is missing of the workspace and report what existed and what was created.

    Raises:
        ResourceConflict: MODELGATE_HOME already holds a different workspace.
        BackendError: the configuration or the dataset is unusable, or MLflow failed.
    """
    from app.ml.dataset import DatasetError, register_dataset
    from app.ml.registry import RegistryError
    from app.pipeline_config import model_registry

    config = _config(spec)
    unknown = [e for e in spec.environments if e not in config.environment_names]
    if unknown:
        raise BackendError(f"environments.{unknown[0]}: not in the pipeline configuration")
    # Inputs are checked before anything is created, so a bad one leaves no half workspace.
    if not config.data.path.is_file():
        raise BackendError(f"data.path: dataset file not found: {config.data.path}")
    tally = _Tally()
    progress(5, f"workspace {spec.workspace}")
    record = _read_workspace(home)
    if record is not None and record.get("name") != spec.workspace:
        raise ResourceConflict(
            f"{home} already holds workspace {record.get('name')!r}; tear it down before "
            f"provisioning {spec.workspace!r}")
    for folder in FOLDERS:
        path = home / folder
        tally.add(f"folder:{folder}", "existing" if path.is_dir() else "created")
        path.mkdir(parents=True, exist_ok=True)

    progress(20, f"MLflow experiment {config.mlflow.experiment}")
    registry = model_registry(config.mlflow, home)
    try:
        # A torn-down experiment is only soft-deleted; restoring it counts as creating it.
        before = _experiment_state(registry, config.mlflow.experiment)
        experiment_id, _ = registry.ensure_experiment()
    except RegistryError as exc:
        raise TransientBackendError(f"MLflow: {exc}") from None
    tally.add(f"experiment:{config.mlflow.experiment}",
              "existing" if before == "active" else "created")

    progress(45, f"dataset {config.data.dataset}")
    try:
        reg = register_dataset(home, config.data.path, config.data.dataset)
    except DatasetError as exc:
        raise BackendError(f"data.path: {exc}") from None
    tally.add(f"dataset:{reg.dataset.name}@{reg.dataset.version}",
              "created" if reg.created else "existing")

    progress(75, "runtime and gateway settings")
    tally.add("runtime-settings", _write_json(home / RUNTIME_SETTINGS,
                                              runtime_settings(config, spec.environments)))
    tally.add("gateway-settings", _write_json(home / GATEWAY_SETTINGS,
                                              gateway_settings(config, spec.environments)))

    progress(90, "workspace record")
    workspace = {"name": spec.workspace, "backend": "local",
                 "region": config.workspace.region,
                 "resource_group": config.workspace.resource_group,
                 "experiment": config.mlflow.experiment,
                 "tracking_uri": config.mlflow.tracking_uri,
                 "environments": list(spec.environments),
                 "created_at": (record or {}).get("created_at")
                 or datetime.now(UTC).isoformat(timespec="seconds")}
    tally.add(f"workspace:{spec.workspace}", _write_json(home / WORKSPACE_FILE, workspace))
    progress(100, "provisioned")
    return ProvisionResult(
        workspace=spec.workspace,
        created=tuple(tally.created),
        existing=tuple(tally.existing),
        details={"updated": list(tally.updated), "home": str(home),
                 "experiment_id": experiment_id,
                 "dataset": {"name": reg.dataset.name, "version": reg.dataset.version,
                             "sha256": reg.dataset.sha256}},
    )


def teardown(home: Path, workspace: str, progress: Progress) -> tuple[str, ...]:
    """Remove the workspace (see the module docstring); return what was removed.

    A workspace that is not provisioned here is not an error: nothing is removed.
    """
    from app.ml.registry import RegistryError
    from app.pipeline_config import MlflowSettings, model_registry

    record = _read_workspace(home)
    if record is None or record.get("name") != workspace:
        progress(100, f"workspace {workspace} is not provisioned here; nothing to remove")
        return ()
    removed: list[str] = []
    for pct, rel, item in ((20, RUNTIME_SETTINGS, "runtime-settings"),
                           (35, GATEWAY_SETTINGS, "gateway-settings")):
        if (home / rel).exists():
            (home / rel).unlink()
            removed.append(item)
            progress(pct, f"removed {item}")
    experiment = str(record.get("experiment") or "")
    if experiment:
        settings = MlflowSettings(experiment, str(record.get("tracking_uri") or ""))
        try:
            if _delete_experiment(model_registry(settings, home), experiment):
                removed.append(f"experiment:{experiment}")
                progress(60, f"removed experiment:{experiment} (MLflow keeps its runs)")
        except RegistryError as exc:
            raise TransientBackendError(f"MLflow: {exc}") from None
    (home / WORKSPACE_FILE).unlink()
    removed.append(f"workspace:{workspace}")
    progress(80, f"removed workspace:{workspace}")
    for folder in FOLDERS:
        try:
            (home / folder).rmdir()  # only when empty: data and models are kept
        except OSError:
            continue
        removed.append(f"folder:{folder}")
        progress(90, f"removed folder:{folder}")
    progress(100, "torn down")
    return tuple(removed)


def _experiment_state(registry: Any, name: str) -> str | None:
    """Return "active", "deleted" or None (no such experiment)."""
    from mlflow.exceptions import MlflowException

    from app.ml.registry import RegistryError

    try:
        found = registry.client.get_experiment_by_name(name)
    except MlflowException as exc:
        raise RegistryError(str(exc)) from exc
    return None if found is None else str(found.lifecycle_stage)


def _delete_experiment(registry: Any, name: str) -> bool:
    """Soft-delete the experiment; False when it does not exist or is already deleted."""
    from mlflow.exceptions import MlflowException

    from app.ml.registry import RegistryError

    if _experiment_state(registry, name) != "active":
        return False
    try:
        found = registry.client.get_experiment_by_name(name)
        registry.client.delete_experiment(found.experiment_id)
    except MlflowException as exc:
        raise RegistryError(str(exc)) from exc
    return True
