"""The train job: train the configured model on a dataset version where the backend trains,
and register the version (tagged with the job, so a redelivery reuses it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.backends.base import BackendError, TrainSpec, TransientBackendError
from app.errors import ValidationError
from app.services.backend import backend
from app.services.jobs import JobCancelled
from app.services.models import pipeline
from app.services.rollout import Reporter

# train_and_register reports this percentage just before it logs and registers the version.
REGISTRATION_PERCENT = 86


def run_train(job: Reporter, params: Mapping[str, Any]) -> dict[str, Any]:
    """Train and register one version; ``params`` were checked at submit (KindSpec).

    Raises:
        TransientBackendError: worth retrying (the job runner queues the job again): e.g. an
            Azure ML job still running when this attempt stops following it; the retry finds
            it by its name and follows it on.
        ValidationError: any other backend error (the message says what to fix).
    """
    from app.ml.config import TrainingConfig

    config = pipeline()
    model = config.model
    if params.get("model") is not None:
        model = TrainingConfig.from_dict({**config.model.to_dict(), **params["model"]})
    version = params.get("dataset_version")

    def progress(percent: int, step: str) -> None:
        try:
            job.progress(percent, step)  # logs the step; raises JobCancelled on request
        except JobCancelled:
            if percent <= REGISTRATION_PERCENT:
                raise
            # The version is registered by now: a cancelled job must not leave one behind, so
            # finishing is the honest outcome.
            job.log("cancellation came after the version was registered; finishing")

    spec = TrainSpec(job_id=job.job_id, model=model, dataset_name=config.data.dataset,
                     dataset_version=version, dataset_path=str(config.data.path),
                     experiment=config.mlflow.experiment, tracking_uri=config.mlflow.tracking_uri)
    try:
        info = backend().train(spec, progress)
    except TransientBackendError:
        raise
    except BackendError as exc:
        message = str(exc)
        if version is not None and "dataset" in message.lower():
            raise ValidationError(f"params.dataset_version: {message}",
                                  errors=[{"field": "params.dataset_version",
                                           "message": message}]) from None
        raise ValidationError(message) from None
    summary = dict(info.summary)
    if summary.get("reused_identical"):
        job.log(f"{info.model_name} version {info.version} was trained on the same data with "
                "the same parameters and seed; reused it (model.skip_identical)")
        return summary
    if summary.get("reused"):
        job.log(f"version {info.version} was registered by an earlier attempt; reusing it")
        return summary
    job.log(f"registered {info.model_name} version {info.version} "
            f"({summary.get('family')}, held-out ROC AUC {summary['metrics']['roc_auc']:.3f}, "
            f"threshold {summary.get('threshold', 0):.3f}) on dataset "
            f"{summary['dataset']['name']} v{summary['dataset']['version']} ({info.where})")
    fairness = summary.get("fairness") or {}
    if fairness:
        job.log("fairness on the held-out part (selection-rate ratio, equalised-odds gap): " +
                "; ".join(f"by {name} {_figure(f.get('selection_rate_ratio'))}, "
                          f"{_figure(f.get('equalized_odds_gap'))}"
                          for name, f in fairness.items()))
    return summary


def _figure(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "not judged"
