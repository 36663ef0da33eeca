"""The train job: train the configured model on a dataset version and register it in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import shared_task

from workers.tasks._pipeline import check_params, pipeline_config
from workers.tasks._runner import JobContext, run_job

if TYPE_CHECKING:
    from app.ml.config import TrainingConfig
    from app.ml.registry import ModelRegistry, ModelVersionInfo
    from app.pipeline_config import PipelineConfig

# train_and_register reports this percentage just before it logs and registers the version.
REGISTRATION_PERCENT = 86
# Summary metrics of a train job's result, as logged on the MLflow run.
RESULT_METRICS: tuple[str, ...] = ("cv_roc_auc", "roc_auc", "accuracy", "f1_bad", "brier",
                                   "expected_cost")


@shared_task(bind=True, name="modelgate.models.train", soft_time_limit=1800, time_limit=1860)
def train(self: Any, job_id: str) -> None:
    """Run a train job (params: optional ``dataset_version`` and ``model`` overrides)."""
    run_job(self, job_id, _train)


def _train(ctx: JobContext) -> dict[str, Any]:
    """Train and register one version tagged with this job; a redelivery reuses it."""
    from app.errors import AppError, ValidationError
    from app.ml.config import ConfigError
    from app.ml.dataset import DatasetError
    from app.ml.registry import RegistryError
    from app.ml.training import TrainingError
    from app.ml.workflow import train_and_register
    from app.pipeline_config import model_registry
    from app.services.jobs import JobCancelled

    check_params(ctx.params, ("dataset_version", "model"))
    config = pipeline_config()
    model_config = _model_config(config, ctx.params.get("model"))
    registry = model_registry(config.mlflow, ctx.home)
    if ctx.attempt > 1:
        # An earlier attempt may have registered its version before its worker died.
        done = _version_of_job(registry, model_config.name, ctx.job_id)
        if done is not None:
            ctx.log(f"version {done.version} was registered by an earlier attempt; reusing it")
            return _summary(done)
    dataset = _dataset(ctx.home, config, ctx.params.get("dataset_version"))

    def progress(percent: int, step: str) -> None:
        try:
            ctx.progress(percent, step)  # logs the step; raises JobCancelled on request
        except JobCancelled:
            if percent <= REGISTRATION_PERCENT:
                raise
            # The version is registered by now: a cancelled job must not leave one behind, so
            # finishing is the honest outcome.
            ctx.log("cancellation came after the version was registered; finishing")

    try:
        result = train_and_register(ctx.home, dataset, job_id=ctx.job_id, config=model_config,
                                    progress=progress, registry=registry,
                                    dataset_name=config.data.dataset)
    except (DatasetError, TrainingError, ConfigError) as exc:
        raise ValidationError(str(exc)) from exc
    except RegistryError as exc:
        raise AppError(f"MLflow: {exc}") from exc
    summary = result.to_dict()
    if result.reused_identical:
        ctx.log(f"{result.model.name} version {result.model.version} was trained on the same "
                "data with the same parameters and seed; reused it (model.skip_identical)")
        return summary
    ctx.log(f"registered {result.model.name} version {result.model.version} "
            f"({result.outcome.family}, held-out ROC AUC {summary['metrics']['roc_auc']:.3f}, "
            f"threshold {result.outcome.threshold:.3f}) on dataset "
            f"{result.dataset.name} v{result.dataset.version}")
    return summary


def _model_config(config: PipelineConfig, overrides: Any) -> TrainingConfig:
    """Merge the job's ``model`` overrides over the file's section, checking each key."""
    from app.errors import ValidationError
    from app.ml.config import ConfigError, TrainingConfig

    if overrides is None:
        return config.model
    if not isinstance(overrides, dict):
        raise ValidationError("params.model: must be an object of training settings",
                              errors=[{"field": "params.model", "message": "not an object"}])
    try:
        TrainingConfig.from_dict(overrides, prefix="params.model")
    except ConfigError as exc:
        raise ValidationError(str(exc), errors=[{"field": exc.key, "message": str(exc)}]
                              ) from None
    return TrainingConfig.from_dict({**config.model.to_dict(), **overrides})


def _dataset(home: Path, config: PipelineConfig, version: Any) -> Path | None:
    """Return the dataset version to train on: the one asked for, the latest, or the file."""
    from app.errors import ValidationError
    from app.ml.dataset import DatasetError, get_version, latest_version

    name = config.data.dataset
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValidationError("params.dataset_version: must be a positive integer",
                                  errors=[{"field": "params.dataset_version",
                                           "message": "not a positive integer"}])
        try:
            return get_version(home, version, name).path
        except DatasetError as exc:
            raise ValidationError(f"params.dataset_version: {exc}",
                                  errors=[{"field": "params.dataset_version",
                                           "message": str(exc)}]) from None
    if latest_version(home, name) is not None:
        return None  # train_and_register takes the latest version
    # Nothing provisioned yet: register the configured file (a no-op for known bytes).
    return config.data.path


def _version_of_job(registry: ModelRegistry, name: str, job_id: str) -> ModelVersionInfo | None:
    return next((v for v in registry.list_versions(name) if v.tags.get("job_id") == job_id),
                None)


def _summary(info: ModelVersionInfo) -> dict[str, Any]:
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
