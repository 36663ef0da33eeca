"""What provisioning, deploying and publishing would do in MODELGATE_HOME, read without
changing anything (``modelgate plan`` and the panel's Plan button on the local backend)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.backends.base import Plan, PlanAction, PlanItem, ProvisionSpec
from app.backends.local import gateway
from app.backends.local.provisioning import (
    GATEWAY_SETTINGS,
    RUNTIME_SETTINGS,
    WORKSPACE_FILE,
    gateway_settings,
    runtime_settings,
)
from app.pipeline_config import PipelineConfig, parse_pipeline_config


def plan(home: Path, spec: ProvisionSpec, offline: bool) -> Plan:
    """Every local resource of the chain with create / update / no change (``offline``:
    nothing is read, everything is to be created)."""
    config = parse_pipeline_config(spec.settings)
    items = [
        _json_item("Workspace record", spec.workspace, home / WORKSPACE_FILE,
                   _workspace_expected(config, spec), offline, ignore=("created_at",)),
        _dataset_item(home, config, offline),
        _json_item("Runtime settings", str(RUNTIME_SETTINGS), home / RUNTIME_SETTINGS,
                   runtime_settings(config, spec.environments), offline),
        _json_item("Gateway settings", str(GATEWAY_SETTINGS), home / GATEWAY_SETTINGS,
                   gateway_settings(config, spec.environments), offline),
    ]
    config_doc = {} if offline else gateway.read(home)
    for environment in spec.environments:
        api = config.gateway.name_for(environment)
        has_backend = not offline and gateway.backend_url(home, environment) is not None
        items.append(PlanItem("Scoring deployment", environment,
                              PlanAction.NO_CHANGE if has_backend else PlanAction.CREATE,
                              note="blue/green: a deploy adds a slot beside the serving one"))
        current = None if offline else gateway.current_revision(home, api)
        items.append(PlanItem("API", api, PlanAction.CREATE if current is None
                              else PlanAction.NO_CHANGE,
                              note=f"path /{config.gateway.path_for(environment)}"))
        items.append(PlanItem("API operation", f"{api}/score", PlanAction.CREATE
                              if current is None else PlanAction.NO_CHANGE))
        items.append(PlanItem("API policy", api, PlanAction.CREATE if current is None
                              else PlanAction.NO_CHANGE,
                              note="" if current is None else f"revision {current} is current"))
        for name in (gateway.backend_url_name(environment),
                     gateway.backend_key_name(environment)):
            present = name in config_doc.get("named_values", {})
            items.append(PlanItem("Named value", name, PlanAction.NO_CHANGE if present
                                  else PlanAction.CREATE,
                                  note="secret" if name.endswith("key") else ""))
    return Plan("local", offline, tuple(items))


def _workspace_expected(config: PipelineConfig, spec: ProvisionSpec) -> dict[str, Any]:
    return {"name": spec.workspace, "backend": "local", "region": config.workspace.region,
            "resource_group": config.workspace.resource_group,
            "experiment": config.mlflow.experiment, "tracking_uri": config.mlflow.tracking_uri,
            "environments": list(spec.environments)}


def _json_item(kind: str, name: str, path: Path, expected: Mapping[str, Any], offline: bool,
               ignore: tuple[str, ...] = ()) -> PlanItem:
    if offline or not path.is_file():
        return PlanItem(kind, name, PlanAction.CREATE)
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return PlanItem(kind, name, PlanAction.UPDATE, ("unreadable -> rewritten",))
    changes = tuple(f"{key}: {current.get(key)!r} -> {value!r}"
                    for key, value in expected.items()
                    if key not in ignore and current.get(key) != value)
    return PlanItem(kind, name, PlanAction.UPDATE if changes else PlanAction.NO_CHANGE, changes)


def _dataset_item(home: Path, config: PipelineConfig, offline: bool) -> PlanItem:
    from app.ml.dataset import DatasetError, list_versions

    name = config.data.dataset
    if offline or not config.data.path.is_file():
        return PlanItem("Dataset version", name, PlanAction.CREATE)
    digest = hashlib.sha256(config.data.path.read_bytes()).hexdigest()
    try:
        versions = list_versions(home, name)
    except DatasetError:
        versions = []
    for version in versions:
        if version.sha256 == digest:
            return PlanItem("Dataset version", f"{name}@{version.version}",
                            PlanAction.NO_CHANGE, note=f"sha256 {digest[:12]}")
    return PlanItem("Dataset version", name, PlanAction.CREATE,
                    note=f"new version for sha256 {digest[:12]}")
