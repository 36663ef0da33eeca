"""The model registry as the panel reads it: versions, lineage and chart data, cached per app.

MLflow is imported only when a registry is first used, and one ModelRegistry (with its
MlflowClient) is kept per app, so pages do not pay for an import or a client per request.
Chart data of a version never changes once registered, so it is cached in memory too.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flask import current_app

from app.errors import ConfigError, NotFound
from app.params import is_id

if TYPE_CHECKING:
    from app.ml.registry import ModelRegistry, ModelVersionInfo
    from app.pipeline_config import PipelineConfig

logger = logging.getLogger(__name__)

_EXTENSION = "modelgate.models"
_CHART_CACHE_SIZE = 64
_RUN_CACHE_SIZE = 2048


@dataclass(frozen=True)
class ChartData:
    """A version's package JSON files, for the charts (each may be empty if unavailable)."""

    metrics: Mapping[str, Any]
    roc: Mapping[str, Any]
    importance: Mapping[str, Any]
    calibration: Mapping[str, Any]
    error: str = ""


class _State:
    """Per-app cache: the pipeline config (by file and mtime), the registry, chart data."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config_key: tuple[str, float] | None = None
        self.config: PipelineConfig | None = None
        self.registry: ModelRegistry | None = None
        self.registry_key: tuple[str, str] | None = None
        self.charts: OrderedDict[tuple[str, str, str], ChartData] = OrderedDict()
        self.runs: OrderedDict[str, tuple[Mapping[str, float], Mapping[str, str]]] = \
            OrderedDict()


def _state() -> _State:
    return current_app.extensions.setdefault(_EXTENSION, _State())  # type: ignore[no-any-return]


def pipeline() -> PipelineConfig:
    """Return the pipeline configuration, re-read when its file changes."""
    from app.pipeline_config import PipelineConfigError, config_path, load_pipeline_config

    state = _state()
    path = config_path()
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        key = (str(path), -1.0)
    with state.lock:
        if state.config is None or state.config_key != key:
            try:
                state.config = load_pipeline_config(path)
            except PipelineConfigError as exc:
                raise ConfigError(f"pipeline configuration: {exc}") from None
            state.config_key = key
        return state.config


def package_dir(name: str, version: str) -> Path:
    """A version's model package (signature, metrics) in the instance's package cache,
    HOME/models/<name>/<version>, filled from the registry when a slot is created."""
    return Path(current_app.config["HOME"]) / "models" / name / str(version)


def default_model_name() -> str:
    """The model the pipeline trains (``model.name``)."""
    return pipeline().model.name


def registry() -> ModelRegistry:
    """Return this app's ModelRegistry (created once per tracking URI and experiment)."""
    from app.pipeline_config import model_registry

    config = pipeline()
    state = _state()
    key = (config.mlflow.tracking_uri, config.mlflow.experiment)
    with state.lock:
        if state.registry is None or state.registry_key != key:
            state.registry = model_registry(config.mlflow, current_app.config["HOME"])
            state.registry_key = key
        return state.registry


def _store_is_empty() -> bool:
    """True when the local sqlite store does not exist yet (nothing was ever trained)."""
    if pipeline().mlflow.tracking_uri:
        return False
    return not (Path(current_app.config["HOME"]) / "mlflow" / "mlflow.db").exists()


def list_versions(name: str) -> list[ModelVersionInfo]:
    """Return every version of ``name``, newest first (empty before the first training).

    Two registry queries whatever the number of versions (one search, one for the aliases);
    the runs' metrics and params come from a cache, since a finished run never changes.
    """
    from mlflow.exceptions import MlflowException

    from app.ml.registry import ModelVersionInfo

    if _store_is_empty():
        return []  # and do not create an MLflow database from a page view
    client = registry().client
    try:
        quoted = name.replace("'", "\\'")
        found = client.search_model_versions(f"name = '{quoted}'")
        if not found:
            return []
        aliases = _aliases(client.get_registered_model(name))
        infos = []
        for mv in found:
            metrics, params = _run_data(client, mv.run_id)
            infos.append(ModelVersionInfo(
                name=mv.name, version=str(mv.version), run_id=mv.run_id, status=str(mv.status),
                created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                source=str(mv.source), aliases=tuple(sorted(aliases.get(str(mv.version), []))),
                tags=MappingProxyType(dict(mv.tags or {})), metrics=metrics, params=params))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # deleted between the two queries
            return []
        raise _unavailable(exc) from None
    return sorted(infos, key=lambda i: int(i.version), reverse=True)


def _aliases(model: Any) -> dict[str, list[str]]:
    """Map version → aliases from a RegisteredModel (a dict, or alias objects in old MLflow)."""
    raw = model.aliases or {}
    pairs = raw.items() if isinstance(raw, Mapping) else ((a.alias, a.version) for a in raw)
    out: dict[str, list[str]] = {}
    for alias, version in pairs:
        out.setdefault(str(version), []).append(str(alias))
    return out


def _run_data(client: Any, run_id: str | None
              ) -> tuple[Mapping[str, float], Mapping[str, str]]:
    """Return a run's metrics and params, cached once the run has finished."""
    if not run_id:
        return MappingProxyType({}), MappingProxyType({})
    state = _state()
    with state.lock:
        if run_id in state.runs:
            state.runs.move_to_end(run_id)
            return state.runs[run_id]
    run = client.get_run(run_id)
    data = (MappingProxyType(dict(run.data.metrics)), MappingProxyType(dict(run.data.params)))
    if run.info.status == "FINISHED":
        with state.lock:
            state.runs[run_id] = data
            while len(state.runs) > _RUN_CACHE_SIZE:
                state.runs.popitem(last=False)
    return data


def get_version(name: str, version: str) -> ModelVersionInfo:
    """Return one version, or raise NotFound."""
    from app.ml.registry import RegistryError

    if not is_id(version) or _store_is_empty():
        raise NotFound(f"model {name!r} has no version {version!r}")
    try:
        return registry().get_version(name, version)
    except RegistryError:
        raise NotFound(f"model {name!r} has no version {version!r}") from None


@dataclass(frozen=True)
class IdenticalVersion:
    """An earlier version trained on the same data with the same parameters and seed."""

    version: str
    serves: tuple[str, ...]  # the environments it serves now


def identical_versions(info: ModelVersionInfo) -> list[IdenticalVersion]:
    """Other versions of the model that ``info`` reproduces exactly (same dataset hash, same
    parameters, same seed), those serving an environment first."""
    from app.services import deployments

    identity = info.training_identity()
    if identity is None:
        return []
    serving: dict[str, list[str]] = {}
    for environment in deployments.environments():
        active = deployments.active(environment)
        if active is not None and active.model_name == info.name:
            serving.setdefault(active.model_version, []).append(environment)
    found = [IdenticalVersion(other.version, tuple(serving.get(other.version, ())))
             for other in list_versions(info.name)
             if other.version != info.version and other.training_identity() == identity]
    return sorted(found, key=lambda v: (not v.serves, int(v.version)))


def _unavailable(exc: Exception) -> Exception:
    from app.errors import ServiceUnavailable

    logger.warning("model registry unavailable: %s", exc)
    return ServiceUnavailable("the model registry (MLflow) cannot be read right now")


def lineages(infos: list[ModelVersionInfo]) -> dict[str, dict[str, Any]]:
    """Lineage of several versions of one model, by version (one deployments query)."""
    from app.services import deployments

    if not infos:
        return {}
    deployed = deployments.of_model(infos[0].name)
    return {info.version: lineage(info, deployed.get(info.version, [])) for info in infos}


def lineage(info: ModelVersionInfo, deployed: list[Any] | None = None) -> dict[str, Any]:
    """Return dataset version → run → model version → deployments for one version."""
    if deployed is None:
        from app.services import deployments

        deployed = deployments.of_model(info.name).get(info.version, [])
    tags = info.tags
    dataset_version = tags.get("dataset_version", "")
    return {
        "dataset": {"name": tags.get("dataset_name") or None,
                    "version": int(dataset_version) if dataset_version.isdigit() else None,
                    "sha256": tags.get("dataset_sha256") or None},
        "run_id": info.run_id,
        "code_version": tags.get("code_version") or None,
        "job_id": tags.get("job_id") or None,
        "model": {"name": info.name, "version": info.version},
        "aliases": list(info.aliases),
        "deployments": [
            {"id": row.id, "environment": row.environment, "slot": row.slot,
             "state": row.state, "job_id": row.job_id,
             "activated_at": row.activated_at.isoformat() if row.activated_at else None}
            for row in deployed],
    }


def versions_dicts(infos: list[ModelVersionInfo]) -> list[dict[str, Any]]:
    """Serialise versions for the REST API: metrics, aliases, tags, lineage and fairness (the
    report and the promotion gate's result)."""
    from app.services import fairness

    by_version = lineages(infos)
    return [{**info.to_dict(), "lineage": by_version[info.version],
             "fairness": fairness.for_api(info)} for info in infos]


def chart_data(info: ModelVersionInfo) -> ChartData:
    """Return the version's ROC, importance, calibration and metrics JSON (cached)."""
    from app.ml.package import CALIBRATION_FILE, IMPORTANCE_FILE, METRICS_FILE, ROC_FILE
    from app.ml.registry import RegistryError

    state = _state()
    key = (registry().tracking_uri, info.name, info.version)
    with state.lock:
        if key in state.charts:
            state.charts.move_to_end(key)
            return state.charts[key]
    package = Path(current_app.config["HOME"]) / "models" / info.name / info.version
    files = (METRICS_FILE, ROC_FILE, IMPORTANCE_FILE, CALIBRATION_FILE)
    try:
        if not all((package / f).is_file() for f in files):
            # Trained elsewhere (or the folder was cleaned): materialise it as the runtime would.
            registry().download_package(info.name, info.version, package)
        parts = [json.loads((package / f).read_text(encoding="utf-8")) for f in files]
    except (RegistryError, OSError, ValueError) as exc:
        logger.warning("charts of %s v%s unavailable: %s", info.name, info.version, exc)
        return ChartData({}, {}, {}, {}, error="the model package of this version is "
                                              "unavailable, so its charts cannot be drawn")
    data = ChartData(*parts)
    with state.lock:
        state.charts[key] = data
        while len(state.charts) > _CHART_CACHE_SIZE:
            state.charts.popitem(last=False)
    return data
