"""Local training: in the worker process, into the MLflow store the spec names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.backends.base import BackendError, Progress, TrainInfo, TrainSpec

# Summary metrics of a train job's result, as logged on the MLflow run.
RESULT_METRICS: tuple[str, ...] = ("cv_roc_auc", "roc_auc", "accuracy", "f1_bad", "brier",
                                   "expected_cost")


def train(home: Path, spec: TrainSpec, progress: Progress) -> TrainInfo:
    """Train and register one version tagged with the job; a version it registered already
    (an earlier attempt whose worker died) is returned instead.

    Raises:
        BackendError: bad data or settings, or MLflow trouble (the message says which).
    """
    from app.ml.config import ConfigError
    from app.ml.dataset import DatasetError, get_version, latest_version
    from app.ml.registry import RegistryError
    from app.ml.training import TrainingError
    from app.ml.workflow import train_and_register
    from app.pipeline_config import MlflowSettings, model_registry

    registry = model_registry(MlflowSettings(spec.experiment, spec.tracking_uri), home)
    try:
        done = version_of_job(registry, spec.model.name, spec.job_id)
        if done is not None:
            return TrainInfo(done.name, done.version, done.run_id or "", _where(registry),
                             summary(done))
        dataset: Any = None  # the latest registered version
        if spec.dataset_version is not None:
            dataset = get_version(home, spec.dataset_version, spec.dataset_name).path
        elif latest_version(home, spec.dataset_name) is None:
            dataset = spec.dataset_path  # nothing provisioned yet: register the configured file
        result = train_and_register(home, dataset, job_id=spec.job_id, config=spec.model,
                                    progress=progress, registry=registry,
                                    dataset_name=spec.dataset_name)
    except (DatasetError, TrainingError, ConfigError) as exc:
        raise BackendError(str(exc)) from exc
    except RegistryError as exc:
        raise BackendError(f"MLflow: {exc}") from exc
    return TrainInfo(result.model.name, result.model.version, result.model.run_id or "",
                     _where(registry), result.to_dict())


def _where(registry: Any) -> str:
    remote = not str(registry.tracking_uri).startswith("sqlite:")
    return "this worker, MLflow " + ("tracking server" if remote else "store in MODELGATE_HOME")


def version_of_job(registry: Any, name: str, job_id: str) -> Any:
    """The version a job registered (its ``job_id`` tag), or None."""
    return next((v for v in registry.list_versions(name) if v.tags.get("job_id") == job_id),
                None)


def summary(info: Any) -> dict[str, Any]:
    """Rebuild a train job's result from a registered version (same keys as the first run)."""
    tags = info.tags
    version = tags.get("dataset_version", "")
    return {
        "model": {"name": info.name, "version": info.version, "run_id": info.run_id},
        "dataset": {"name": tags.get("dataset_name"),
                    "version": int(version) if version.isdigit() else None,
                    "sha256": tags.get("dataset_sha256"), "created": False},
        "family": tags.get("family"),
        "threshold": float(tags["threshold"]) if tags.get("threshold") else None,
        "metrics": {k: info.metrics.get(k) for k in RESULT_METRICS},
        "reused": True,
    }
