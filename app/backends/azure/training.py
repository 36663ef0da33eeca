"""Training on Azure ML: a command job on the workspace's compute cluster running modelgate's
own training (``python -m app.ml.train_job``) on the registered data asset, followed until it
ends, its output registered as an MLflow-format model that also holds the serving package.

Idempotent by the panel's job id:
- a model version tagged ``modelgate_job=<id>`` is returned without training again;
- the Azure ML job is named after the id (``modelgate-train-<id>``): a retried or redelivered
  job finds it and follows it instead of submitting a second one.

Following: ``jobs.get`` gives the status (each change is a progress step); the log lines come
from the run's details in Azure ML's run history (``logFiles``: a read-only URL per log file),
read through the same HTTP transport as every other call — what ``jobs.stream`` reads, without
its console printing. When the run history cannot be read, the status transitions are still
reported. A progress callback that raises (the job was cancelled) cancels the Azure ML job
(``jobs.begin_cancel``) and the exception goes through.

The job logs its metrics to its own MLflow run, the summary as the run tag
``modelgate.summary`` and the serving package's signature as ``modelgate.signature``
(app/ml/train_job.py); the run details carry those tags. The model version gets the summary as
tags, so a reused version reports the same result, and the signature (with the version number
filled in) as its property ``modelgate.signature``, where the smoke test reads the example it
scores and the classes and version it expects.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.backends.azure import infra, names
from app.backends.azure.context import AzureContext, azure_errors
from app.backends.azure.training_assets import (
    BASE_IMAGE,
    CODE_NAME,
    CONFIG_FILE,
    ENVIRONMENT_NAME,
    CodeSnapshot,
    conda_spec,
    environment_version,
    stage_code,
)
from app.backends.base import (
    BackendError,
    Progress,
    ResourceNotFound,
    TrainInfo,
    TrainSpec,
    TransientBackendError,
)

logger = logging.getLogger(__name__)

JOB_TAG = "modelgate_job"
SUMMARY_TAG = "modelgate.summary"  # app.ml.train_job.SUMMARY_TAG (not imported: no app.ml here)
SIGNATURE_TAG = "modelgate.signature"  # app.ml.train_job.SIGNATURE_TAG
# What azure-ai-ml sends for model assets (the container's nextVersion is read with it).
MODELS_API_VERSION = "2023-08-01-preview"
SUMMARY_METRICS: tuple[str, ...] = ("cv_roc_auc", "roc_auc", "accuracy", "f1_bad", "brier",
                                    "expected_cost")
OUTPUT = "model"
COMMAND = ("python -m app.ml.train_job --data ${{inputs.data}} --out ${{outputs.model}} "
           f"--config {CONFIG_FILE}")
# Between polls of a running job (tests poll at once: polling_interval=0).
POLL_SECONDS = 15.0
# The train job's soft limit on azure is AZURE_TRAIN_TIME_LIMIT_SECONDS (3 h): stop following
# well before it (submission and registration need minutes too); the retry follows on.
FOLLOW_SECONDS = 160 * 60.0
# Azure ML stops the job itself after this long (queueing for a node not included).
JOB_TIMEOUT_SECONDS = 2 * 3600
CANCEL_WAIT_SECONDS = 60.0
# Log lines reported as progress steps per job; the rest stay in Azure ML studio.
MAX_LOG_LINES = 300
LINE_CHARS = 240

RUNNING, COMPLETED = "Running", "Completed"
FAILED_STATES = frozenset({"Failed", "Canceled", "NotResponding"})
# Percent reached at each status (never lower than what was reported before).
STATUS_PERCENT: Mapping[str, int] = {
    "NotStarted": 6, "Starting": 8, "Queued": 10, "Provisioning": 12, "Preparing": 15,
    RUNNING: 20, "Finalizing": 82, "CancelRequested": 82, COMPLETED: 85,
}
LAST_FOLLOW_PERCENT = 84
# Azure ML's streamable log files (JobLogPattern in azure.ai.ml): the common runtime's
# user_logs/std_log.txt, else the legacy runtime's azureml-logs/NN_*.txt.
_COMMON_RUNTIME_LOG = re.compile(r"user_logs/std_log[\D]*[0]*(?:_ps)?\.txt")
_LEGACY_LOG = re.compile(r"azureml-logs/[\d]{2}.+\.txt")
_NAME_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def job_name(job_id: str) -> str:
    """The Azure ML job name of a panel job (letters, digits, ``-`` and ``_`` only)."""
    return "modelgate-train-" + _NAME_UNSAFE.sub("-", job_id.lower()).strip("-")


def train(ctx: AzureContext, spec: TrainSpec, progress: Progress) -> TrainInfo:
    """Train in an Azure ML job and register the result (see the module docstring).

    Raises:
        BackendError: the data asset is missing, the job failed or was cancelled in Azure ML
            (with its own error message), or Azure refused a call.
    """
    ml = ctx.client("ml")
    model_name = spec.model.name
    name = job_name(spec.job_id)
    progress(1, f"Azure ML: looking for a {model_name} version registered by this job")
    with azure_errors(f"reading the versions of model {model_name}"):
        done = _version_of_job(ml, model_name, spec.job_id)
    if done is not None:
        progress(100, f"{model_name} version {done.version} was registered by an earlier "
                      "attempt of this job")
        return _info(done, reused=True)
    with azure_errors(f"reading Azure ML job {name}"):
        existing = _find_job(ml, name)
    follower = _Follower(ctx, ml, name, progress)
    if existing is None:
        _submit(ctx, ml, spec, name, progress)
        follower.report(5, f"submitted Azure ML job {name} on compute {ctx.azure.compute_name}")
    else:
        follower.report(5, f"following Azure ML job {name}, submitted by an earlier attempt "
                           f"({_status(existing)})")
    status, details = follower.follow()
    if status != COMPLETED:
        raise BackendError(f"Azure ML job {name} {status.lower()}: {_error_message(details)}")
    summary = _run_summary(name, details)
    signature = _run_signature(name, details)
    progress(86, f"registering {model_name} from the output of Azure ML job {name}")
    with azure_errors(f"registering model {model_name} from Azure ML job {name}"):
        model = _register(ctx, ml, model_name, name, spec.job_id, summary, signature)
    progress(100, f"registered {model_name} version {model.version} (Azure ML job {name})")
    return _info(model, reused=False)


# --------------------------------------------------------------------------- reuse


def _version_of_job(ml: Any, model_name: str, job_id: str) -> Any:
    """The model version tagged with this panel job, or None."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        versions = list(ml.models.list(name=model_name))
    except ResourceNotFoundError:  # no version of the model yet
        return None
    return next((m for m in versions if (m.tags or {}).get(JOB_TAG) == job_id), None)


def _find_job(ml: Any, name: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return ml.jobs.get(name)
    except ResourceNotFoundError:
        return None


# --------------------------------------------------------------------------- submission


def _submit(ctx: AzureContext, ml: Any, spec: TrainSpec, name: str, progress: Progress) -> None:
    """Resolve the data asset, ensure the environment and the code, submit the command job."""
    from azure.ai.ml import Input, Output, command
    from azure.ai.ml.constants import AssetTypes

    data = _data_asset(ctx, ml, spec)
    progress(2, f"Azure ML: training data {data.name} version {data.version} ({data.type})")
    environment = _ensure_environment(ml, progress)
    with tempfile.TemporaryDirectory(prefix="modelgate-azure-code-") as tmp:
        snapshot = stage_code(Path(tmp) / "code", spec.model.to_dict())
        code = _ensure_code(ml, snapshot, progress)
    args = f" --dataset-name {shlex.quote(str(data.name))} " \
           f"--dataset-version {shlex.quote(str(data.version))}"
    job = command(
        name=name,
        display_name=f"modelgate train {spec.job_id}",
        description=f"modelgate train job {spec.job_id}: {spec.model.name} on {data.name} "
                    f"version {data.version}",
        experiment_name=spec.experiment or spec.model.name,
        compute=ctx.azure.compute_name,
        code=code,
        environment=environment,
        command=COMMAND + args,
        inputs={"data": Input(type=data.type, path=f"azureml:{data.name}:{data.version}")},
        outputs={OUTPUT: Output(type=AssetTypes.MLFLOW_MODEL)},
        tags={JOB_TAG: spec.job_id, "dataset_name": str(data.name),
              "dataset_version": str(data.version)},
        timeout=JOB_TIMEOUT_SECONDS,
    )
    progress(4, f"submitting Azure ML job {name}")
    try:
        with azure_errors(f"submitting Azure ML job {name}"):
            ml.jobs.create_or_update(job)
    except BackendError:
        # Another attempt may have submitted it meanwhile: follow that one.
        with azure_errors(f"reading Azure ML job {name}"):
            if _find_job(ml, name) is None:
                raise
        logger.info("Azure ML job %s exists already; following it", name)


def _data_asset(ctx: AzureContext, ml: Any, spec: TrainSpec) -> Any:
    """The registered data asset (the version asked for, else the latest)."""
    wanted = "latest version" if spec.dataset_version is None else \
        f"version {spec.dataset_version}"
    try:
        with azure_errors(f"reading dataset {spec.dataset_name} ({wanted})"):
            if spec.dataset_version is None:
                return ml.data.get(spec.dataset_name, label="latest")
            return ml.data.get(spec.dataset_name, version=str(spec.dataset_version))
    except ResourceNotFound:
        pass
    raise BackendError(f"dataset {spec.dataset_name} ({wanted}) is not registered in Azure ML "
                       f"workspace {ctx.workspace}: run provision, which registers it")


def _ensure_environment(ml: Any, progress: Progress) -> str:
    """The training environment (created once per set of package versions)."""
    from azure.ai.ml.entities import Environment
    from azure.core.exceptions import ResourceNotFoundError

    spec = conda_spec()
    version = environment_version(spec)
    with azure_errors(f"creating Azure ML environment {ENVIRONMENT_NAME}"):
        try:
            ml.environments.get(ENVIRONMENT_NAME, version=version)
        except ResourceNotFoundError:
            progress(3, f"Azure ML: creating environment {ENVIRONMENT_NAME} version {version}")
            ml.environments.create_or_update(Environment(
                name=ENVIRONMENT_NAME, version=version, image=BASE_IMAGE, conda_file=spec,
                description="modelgate's training: scikit-learn, pandas, mlflow (the worker's "
                            "versions)"))
    return f"azureml:{ENVIRONMENT_NAME}:{version}"


def _ensure_code(ml: Any, snapshot: CodeSnapshot, progress: Progress) -> str:
    """Register the code snapshot and return its ARM id.

    The SDK first looks the snapshot's content hash up among the versions of the code asset:
    one Azure ML holds already is reused and nothing is uploaded; otherwise it asks for an
    upload location (``startPendingUpload``) and uploads the files to Blob Storage directly
    (not through ``transport=``). MLClient keeps its code operations private (``_code``, the
    ones it resolves a job's local ``code=`` with); they are used here so the code asset is
    named and versioned instead of anonymous.
    """
    from azure.ai.ml.entities._assets import Code  # not exported by azure.ai.ml.entities

    progress(3, f"Azure ML: training code {CODE_NAME} version {snapshot.version}")
    with azure_errors(f"registering the training code ({CODE_NAME} version {snapshot.version})"):
        code = ml._code.create_or_update(Code(name=CODE_NAME, version=snapshot.version,
                                              path=str(snapshot.path)))
    return str(code.id)


# --------------------------------------------------------------------------- following


class _Follower:
    """Polls one Azure ML job until it ends, reporting its status changes and log lines."""

    def __init__(self, ctx: AzureContext, ml: Any, name: str, progress: Progress) -> None:
        self.ctx = ctx
        self.ml = ml
        self.name = name
        self.progress = progress
        self.percent = 5
        self.lines_seen: dict[str, int] = {}
        self.lines_reported = 0
        self.logs_unreadable = False
        self.poll = float(ctx.client_kwargs.get("polling_interval", POLL_SECONDS))

    def report(self, percent: int, step: str) -> None:
        """Report progress; when the callback raises (the job was cancelled), cancel the
        Azure ML job and let the exception through."""
        self.percent = max(self.percent, min(percent, LAST_FOLLOW_PERCENT))
        try:
            self.progress(self.percent, step)
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Ask Azure ML to cancel the job (a failure to do so is logged, not raised: the
        cancellation that caused it is what the caller must see)."""
        try:
            with azure_errors(f"cancelling Azure ML job {self.name}"):
                self.ml.jobs.begin_cancel(self.name).wait(timeout=CANCEL_WAIT_SECONDS)
            logger.info("cancelled Azure ML job %s", self.name)
        except BackendError as exc:
            logger.warning("could not cancel Azure ML job %s: %s", self.name, exc)

    def follow(self) -> tuple[str, Any]:
        """Poll until a terminal status; returns it with the run's last details (None when
        the run history could not be read)."""
        started = time.monotonic()
        seen = ""
        while True:
            with azure_errors(f"reading Azure ML job {self.name}"):
                status = _status(self.ml.jobs.get(self.name))
            if status != seen:
                self.report(STATUS_PERCENT.get(status, self.percent),
                            f"Azure ML job {self.name}: {status}")
                seen = status
            details = self.details()
            self.report_new_lines(details)
            if status == COMPLETED or status in FAILED_STATES:
                return status, details
            elapsed = time.monotonic() - started
            if elapsed > FOLLOW_SECONDS:
                raise TransientBackendError(
                    f"Azure ML job {self.name} is still {status} after {elapsed / 60:.0f} min; "
                    "a retry of this job follows it on")
            time.sleep(self.poll)

    def details(self) -> Any:
        """The run's details from Azure ML's run history (what ``jobs.stream`` reads), or
        None when they cannot be read (then only status changes are reported)."""
        from azure.core.exceptions import AzureError

        try:
            # JobOperations keeps its run-history client private; it is the one jobs.stream uses
            runs = self.ml.jobs._runs_operations
            return runs.get_run_details(self.name)
        except (AzureError, AttributeError) as exc:
            if not self.logs_unreadable:
                logger.warning("Azure ML job %s: run history unreadable (%s); reporting status "
                               "changes only", self.name, type(exc).__name__)
            self.logs_unreadable = True
            return None

    def report_new_lines(self, details: Any) -> None:
        """Report the lines added to the job's streamable log files since the last poll."""
        files: Mapping[str, str] = getattr(details, "log_files", None) or {}
        names = sorted(n for n in files if _COMMON_RUNTIME_LOG.fullmatch(n)) or \
            sorted(n for n in files if _LEGACY_LOG.fullmatch(n))
        for log_name in names:
            text = self.read_log(log_name, files[log_name])
            if text is None:
                continue
            lines = text.splitlines()
            for line in lines[self.lines_seen.get(log_name, 0):]:
                self.report_line(line)
            self.lines_seen[log_name] = len(lines)

    def report_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        self.lines_reported += 1
        if self.lines_reported > MAX_LOG_LINES:
            if self.lines_reported == MAX_LOG_LINES + 1:
                self.report(self.percent, f"Azure ML job {self.name}: more log lines in Azure "
                                          "ML studio")
            return
        step = self.percent + 1 if self.percent >= STATUS_PERCENT[RUNNING] else self.percent
        self.report(step, f"{self.name}: {line[:LINE_CHARS]}")

    def read_log(self, log_name: str, url: str) -> str | None:
        """A log file's text; None (logged once, without the URL: it holds a SAS token)
        when it cannot be read."""
        from azure.core import PipelineClient
        from azure.core.exceptions import AzureError
        from azure.core.pipeline.policies import HeadersPolicy, RedirectPolicy, RetryPolicy
        from azure.core.rest import HttpRequest

        transport = self.ctx.client_kwargs.get("transport")
        # No content-decoding or logging policies: the body is plain text, the URL a secret.
        client = PipelineClient(base_url=url.split("?", 1)[0],
                                policies=[HeadersPolicy(), RedirectPolicy(), RetryPolicy()],
                                **({"transport": transport} if transport else {}))
        try:
            response = client.send_request(HttpRequest("GET", url))
            response.raise_for_status()
            return str(response.text())
        except AzureError as exc:
            status = getattr(exc, "status_code", None) or type(exc).__name__
            logger.warning("Azure ML job %s: log file %s unreadable (%s)", self.name, log_name,
                           status)
            return None


def _status(job: Any) -> str:
    """A job's status as Azure ML spells it (``Running``; the SDK hands out an enum)."""
    status = job.status
    return str(getattr(status, "value", status))


def _error_message(details: Any) -> str:
    """The failed run's own error message (run history), or where to look."""
    error = getattr(getattr(details, "error", None), "error", None)
    message = str(getattr(error, "message", "") or "").strip()
    code = str(getattr(error, "code", "") or "").strip()
    if message:
        return f"{code}: {message}" if code else message
    return "Azure ML gave no error message; see the job's logs in Azure ML studio"


# --------------------------------------------------------------------------- registration


def _run_summary(name: str, details: Any) -> dict[str, Any]:
    """The summary the job logged (run tag ``modelgate.summary``).

    Raises:
        BackendError: the run history is unreadable or the job logged no summary.
    """
    if details is None:
        raise BackendError(f"Azure ML job {name} completed, but its run details (the metrics "
                           "it logged) cannot be read; a retry of this job registers it")
    raw = (getattr(details, "tags", None) or {}).get(SUMMARY_TAG)
    try:
        summary = json.loads(raw) if raw else None
        ok = isinstance(summary, dict) and all(k in summary for k in
                                               ("family", "threshold", "metrics", "dataset"))
    except ValueError:
        ok = False
    if not ok:
        raise BackendError(f"Azure ML job {name} completed without logging its summary (run "
                           f"tag {SUMMARY_TAG}): is MLflow logging (azureml-mlflow) set up in "
                           "its environment?")
    assert isinstance(summary, dict)
    return summary


def _version_tags(job_id: str, name: str, summary: Mapping[str, Any]) -> dict[str, str]:
    """The model version's tags: the panel job, the Azure ML job, lineage and the summary."""
    dataset = summary.get("dataset") or {}
    metrics = summary.get("metrics") or {}
    tags = {JOB_TAG: job_id, "azureml_job": name,
            "dataset_name": str(dataset.get("name") or ""),
            "dataset_version": "" if dataset.get("version") is None
            else str(dataset["version"]),
            "dataset_sha256": str(dataset.get("sha256") or ""),
            "family": str(summary.get("family") or ""),
            "threshold": repr(float(summary["threshold"]))}
    for key in SUMMARY_METRICS:
        if metrics.get(key) is not None:
            tags[key] = repr(float(metrics[key]))
    return tags


def _run_signature(name: str, details: Any) -> dict[str, Any]:
    """The serving package's signature the job logged (run tag ``modelgate.signature``).

    Raises:
        BackendError: the job logged none, or not a signature (classes and an example).
    """
    raw = (getattr(details, "tags", None) or {}).get(SIGNATURE_TAG)
    try:
        signature = json.loads(raw) if raw else None
        ok = isinstance(signature, dict) and isinstance(signature.get("classes"), list) and \
            isinstance(signature.get("example"), dict)
    except ValueError:
        ok = False
    if not ok:
        raise BackendError(f"Azure ML job {name} completed without logging the model's "
                           f"signature (run tag {SIGNATURE_TAG}), which the smoke test needs: "
                           "was it run by an older modelgate? Train again")
    assert isinstance(signature, dict)
    return signature


def _next_version(ctx: AzureContext, model_name: str) -> str:
    """The version Azure ML gives the next registration of the model: its container's
    ``nextVersion`` ("1" for a new model), read as azure-ai-ml reads it before registering."""
    container = infra.arm_get(ctx, ctx.resource_id(
        f"Microsoft.MachineLearningServices/workspaces/{ctx.workspace}/models/{model_name}"),
        MODELS_API_VERSION)
    version = ((container or {}).get("properties") or {}).get("nextVersion")
    return str(version or "1")


def _register(ctx: AzureContext, ml: Any, model_name: str, name: str, job_id: str,
              summary: Mapping[str, Any], signature: Mapping[str, Any]) -> Any:
    """Register the job's ``model`` output as the next version of the model (mlflow_model),
    with the signature (naming that version) as its property."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    # The version is fixed before the PUT so that the signature can name it (the scoring
    # container answers with the version Azure ML mounts; the smoke test compares them).
    version = _next_version(ctx, model_name)
    signed = json.dumps({**signature, "version": version}, sort_keys=True,
                        separators=(",", ":"))
    return ml.models.create_or_update(Model(
        name=model_name,
        version=version,
        path=f"azureml://jobs/{name}/outputs/{OUTPUT}",
        type=AssetTypes.MLFLOW_MODEL,
        description=f"trained by modelgate job {job_id} (Azure ML job {name}); the serving "
                    "package is under package/",
        tags=_version_tags(job_id, name, summary),
        properties={names.SIGNATURE_PROPERTY: signed},
    ))


def _info(model: Any, *, reused: bool) -> TrainInfo:
    """The train job's result, rebuilt from the version's tags (same keys as the local
    backend's result)."""
    tags: Mapping[str, str] = model.tags or {}
    name = tags.get("azureml_job", "")
    version = tags.get("dataset_version", "")

    def number(key: str) -> float | None:
        value = tags.get(key)
        return float(value) if value else None

    result: dict[str, Any] = {
        "model": {"name": model.name, "version": str(model.version), "run_id": name},
        "dataset": {"name": tags.get("dataset_name") or None,
                    "version": int(version) if version.isdigit() else (version or None),
                    "sha256": tags.get("dataset_sha256") or None, "created": False},
        "family": tags.get("family") or None,
        "threshold": number("threshold"),
        "metrics": {key: number(key) for key in SUMMARY_METRICS},
        "azureml_job": name,
    }
    if reused:
        result["reused"] = True
    return TrainInfo(str(model.name), str(model.version), name, f"azure ml job {name}", result)


