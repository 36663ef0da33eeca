"""Training on Azure ML through the SDK's own code paths against the fake Azure: the command
job's request, following it (status changes and log lines), registration as an mlflow_model,
idempotency by the panel's job id, failures, cancellation, and the code upload that bypasses
``transport=`` (caught with ``responses``)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from app.backends.base import BackendError, TrainSpec, TransientBackendError
from tests.azure.fake_azure import FakeAzure
from tests.azure.fakes_training import (
    BLOB,
    DEFAULT_LOG,
    DEFAULT_SIGNATURE,
    DEFAULT_SUMMARY,
    UPLOAD_CONTAINER,
    WS_ID,
    JobPlan,
)

JOB_ID = "a1b2c3d4e5f6"
JOB_NAME = f"modelgate-train-{JOB_ID}"
MODEL = "german-credit"
# The api-versions azure-ai-ml 1.35 sends for each call (re-check when the SDK moves).
API_JOBS_GET = "2024-01-01-preview"
API_JOBS_PUT = "2025-01-01-preview"
API_MODELS = "2023-08-01-preview"
API_ASSETS = "2023-04-01-preview"
API_CODES = "2023-04-01"
API_CANCEL = "2023-04-01-preview"
SECRETS = ("FAKESASSIGNATURE", "FAKEUPLOADSIGNATURE", "fake-arm-token")


class Steps:
    """A progress callback that records the steps and checks they never go back."""

    def __init__(self, raise_on: str | None = None, exc: BaseException | None = None) -> None:
        self.steps: list[tuple[int, str]] = []
        self.raise_on = raise_on
        self.exc = exc

    def __call__(self, percent: int, step: str) -> None:
        assert 0 <= percent <= 100
        assert not self.steps or percent >= self.steps[-1][0], (self.steps[-1], percent, step)
        self.steps.append((percent, step))
        if self.raise_on and self.raise_on in step and self.exc is not None:
            raise self.exc

    def texts(self) -> list[str]:
        return [step for _, step in self.steps]


class JobCancelled(Exception):
    """What the panel's progress callback raises once a user cancelled the job."""


@pytest.fixture
def ml_ready(fake_azure: FakeAzure, azure_backend: Any) -> FakeAzure:
    """A provisioned workspace: the data asset registered, the training code uploaded."""
    fake_azure.training.seed_workspace()
    fake_azure.training.seed_data("german-credit", "1")
    fake_azure.training.seed_code(azure_backend.ctx.config.model.to_dict())
    return fake_azure


def spec(backend: Any, **kwargs: Any) -> TrainSpec:
    values: dict[str, Any] = {"job_id": JOB_ID, "model": backend.ctx.config.model,
                              "dataset_name": "german-credit"}
    values.update(kwargs)
    return TrainSpec(**values)


def only(fake: FakeAzure, method: str, pattern: str) -> Any:
    found = fake.calls(method, pattern)
    assert len(found) == 1, [r.url for r in found]
    return found[0]


def no_secrets(caplog: pytest.LogCaptureFixture, steps: Steps) -> None:
    text = "\n".join([r.getMessage() for r in caplog.records] + steps.texts())
    for secret in SECRETS:
        assert secret not in text


def test_train_submits_a_command_job_follows_it_and_registers_an_mlflow_model(
        azure_backend: Any, ml_ready: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    steps = Steps()
    info = azure_backend.train(spec(azure_backend), steps)

    # the job: a command on the cluster running modelgate's own training on the data asset
    put = only(ml_ready, "PUT", f"/jobs/{JOB_NAME}$")
    assert put.api_version == API_JOBS_PUT
    props = put.body["properties"]
    assert props["jobType"] == "Command"
    assert props["computeId"] == f"{WS_ID}/computes/cpu-cluster"
    assert props["command"].startswith(
        "python -m app.ml.train_job --data ${{inputs.data}} --out ${{outputs.model}} "
        "--config config.json")
    assert "--dataset-name german-credit --dataset-version 1" in props["command"]
    assert props["inputs"] == {"data": {"uri": f"{WS_ID}/data/german-credit/versions/1",
                                        "jobInputType": "uri_file"}}
    assert props["outputs"] == {"model": {"jobOutputType": "mlflow_model"}}
    assert re.fullmatch(f"{WS_ID}/environments/modelgate-training/versions/[0-9a-f]{{20}}",
                        props["environmentId"])
    assert re.fullmatch(f"{WS_ID}/codes/modelgate-training-code/versions/[0-9a-f]{{20}}",
                        props["codeId"])
    assert props["tags"] == {"modelgate_job": JOB_ID, "dataset_name": "german-credit",
                             "dataset_version": "1"}
    assert props["limits"]["timeout"] == "PT2H"
    assert props["experimentName"] == MODEL

    # the environment: Azure ML's base image, conda file pinning the worker's versions
    env = only(ml_ready, "PUT", "/environments/modelgate-training/versions/")
    assert env.api_version == API_ASSETS
    assert env.body["properties"]["image"].startswith("mcr.microsoft.com/azureml/")
    from importlib.metadata import version
    conda = env.body["properties"]["condaFile"]
    for dist in ("scikit-learn", "pandas", "numpy", "mlflow-skinny"):
        assert f"{dist}=={version(dist)}" in conda
    assert "azureml-mlflow" in conda
    assert env.path.endswith(props["environmentId"].rsplit("/", 1)[1])

    # the code was found by its content hash: nothing uploaded
    lookup = only(ml_ready, "GET", "/codes/modelgate-training-code/versions$")
    assert lookup.api_version == API_CODES and lookup.query["hash"]
    assert ml_ready.calls("POST", "startPendingUpload") == []
    assert ml_ready.calls("PUT", "/codes/") == []

    # the registration: the job's output as an mlflow_model tagged with the job and its summary
    model = only(ml_ready, "PUT", f"/models/{MODEL}/versions/1$")
    assert model.api_version == API_MODELS
    body = model.body["properties"]
    assert body["modelType"] == "mlflow_model"
    assert body["modelUri"] == f"azureml://jobs/{JOB_NAME}/outputs/model"
    tags = body["tags"]
    assert tags["modelgate_job"] == JOB_ID and tags["azureml_job"] == JOB_NAME
    assert tags["dataset_sha256"] == DEFAULT_SUMMARY["dataset"]["sha256"]
    assert float(tags["roc_auc"]) == DEFAULT_SUMMARY["metrics"]["roc_auc"]
    assert float(tags["threshold"]) == DEFAULT_SUMMARY["threshold"]
    # ... and the signature the job logged, naming the version, for the smoke test
    assert json.loads(body["properties"]["modelgate.signature"]) == \
        {**DEFAULT_SIGNATURE, "version": "1"}
    container = only(ml_ready, "GET", f"/workspaces/modelgate-ws/models/{MODEL}$")
    assert container.api_version == API_MODELS
    assert ml_ready.requests.index(container) < ml_ready.requests.index(model)

    # following: status changes in order, then the job's own log lines, then registration
    texts = steps.texts()
    statuses = [t.rsplit(": ", 1)[1] for t in texts if t.startswith(f"Azure ML job {JOB_NAME}:")]
    assert statuses == ["Queued", "Running", "Completed"]
    for line in DEFAULT_LOG:
        assert f"{JOB_NAME}: {line}" in texts
    assert texts.index(f"Azure ML job {JOB_NAME}: Running") < \
        texts.index(f"{JOB_NAME}: {DEFAULT_LOG[0]}")
    assert steps.steps[-1] == (100, f"registered {MODEL} version 1 (Azure ML job {JOB_NAME})")
    assert all(r.api_version == API_JOBS_GET for r in ml_ready.calls("GET", f"/jobs/{JOB_NAME}$"))
    details = ml_ready.calls("GET", f"/runs/{JOB_NAME}/details$")
    assert details and all(r.url.startswith("https://westeurope.api.azureml.ms/history/v1.0/")
                           for r in details)

    # the result: what the services expect of a train job (same keys as the local backend)
    assert (info.model_name, info.version, info.run_id) == (MODEL, "1", JOB_NAME)
    assert info.where == f"azure ml job {JOB_NAME}"
    assert info.summary["metrics"] == DEFAULT_SUMMARY["metrics"]
    assert info.summary["family"] == "logistic_regression"
    assert info.summary["dataset"] == {**DEFAULT_SUMMARY["dataset"], "created": False}
    assert info.summary["model"] == {"name": MODEL, "version": "1", "run_id": JOB_NAME}
    assert "reused" not in info.summary
    no_secrets(caplog, steps)


def test_a_version_already_registered_by_the_job_is_returned_without_training(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    first = azure_backend.train(spec(azure_backend), Steps())
    before = len(ml_ready.requests)
    again = Steps()
    second = azure_backend.train(spec(azure_backend), again)

    later = ml_ready.requests[before:]
    assert [(r.method, r.path.rsplit("/", 2)[-2:]) for r in later] == \
        [("GET", [MODEL, "versions"])], "one read, no job, no registration"
    assert second.version == first.version == "1"
    assert second.summary["reused"] is True
    assert second.summary["metrics"] == first.summary["metrics"]
    assert second.summary["dataset"] == first.summary["dataset"]
    assert second.run_id == JOB_NAME
    assert again.steps[-1][0] == 100


def test_a_retry_follows_the_job_an_earlier_attempt_submitted(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    ml_ready.training.seed_job(JOB_NAME, JobPlan(statuses=["Running", "Running", "Completed"]))
    steps = Steps()
    info = azure_backend.train(spec(azure_backend), steps)

    assert ml_ready.calls("PUT", "/jobs/") == [], "no second submission"
    assert ml_ready.calls("PUT", "/environments/") == []
    assert ml_ready.calls("GET", "/data/") == []
    assert any("submitted by an earlier attempt (Running)" in t for t in steps.texts())
    assert info.version == "1"
    only(ml_ready, "PUT", f"/models/{MODEL}/versions/1$")


def test_a_job_another_attempt_submitted_meanwhile_is_followed(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    """Two deliveries of one panel job race: the second PUT is refused because the first
    created the job; the loser follows the winner's job instead of failing."""
    from tests.azure.fake_azure import arm_error

    def taken(fake: FakeAzure, request: Any, match: Any) -> Any:
        fake.training.seed_job(JOB_NAME)  # the other delivery's PUT landed first
        return arm_error(409, "UserError", f"A job with name {JOB_NAME} already exists.")

    ml_ready.route("PUT", f"/jobs/{JOB_NAME}$")(taken)
    info = azure_backend.train(spec(azure_backend), Steps())
    assert len(ml_ready.calls("PUT", f"/jobs/{JOB_NAME}$")) == 1
    assert info.version == "1"
    only(ml_ready, "PUT", f"/models/{MODEL}/versions/1$")


def test_a_failed_job_raises_its_own_error_and_registers_nothing(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    ml_ready.training.plan(JOB_NAME, statuses=["Queued", "Running", "Failed"], summary=None,
                           error=("UserError", "Execution failed. User process 'python' exited "
                                               "with status code 2: dataset lacks columns: Risk"))
    steps = Steps()
    with pytest.raises(BackendError, match=f"Azure ML job {JOB_NAME} failed: UserError: "
                                           "Execution failed.*dataset lacks columns: Risk"):
        azure_backend.train(spec(azure_backend), steps)
    assert ml_ready.calls("PUT", "/models/") == []
    assert ml_ready.calls("POST", "/cancel") == [], "a finished job is not cancelled"
    assert f"Azure ML job {JOB_NAME}: Failed" in steps.texts()


def test_a_job_cancelled_in_azure_ml_is_a_backend_error(azure_backend: Any,
                                                         ml_ready: FakeAzure) -> None:
    ml_ready.training.plan(JOB_NAME, statuses=["Queued", "Canceled"], summary=None)
    with pytest.raises(BackendError, match=f"Azure ML job {JOB_NAME} canceled: Azure ML gave "
                                           "no error message"):
        azure_backend.train(spec(azure_backend), Steps())
    assert ml_ready.calls("PUT", "/models/") == []


def test_cancelling_the_panel_job_cancels_the_azure_ml_job(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    cancelled = JobCancelled("job cancelled by alice")
    steps = Steps(raise_on=f"Azure ML job {JOB_NAME}: Running", exc=cancelled)
    with pytest.raises(JobCancelled) as caught:
        azure_backend.train(spec(azure_backend), steps)
    assert caught.value is cancelled, "the callback's own exception goes through"

    cancel = only(ml_ready, "POST", f"/jobs/{JOB_NAME}/cancel$")
    assert cancel.api_version == API_CANCEL
    assert cancel.url.startswith(f"https://management.azure.com{WS_ID}/jobs/")
    assert ml_ready.training.plans[JOB_NAME].cancelled
    assert ml_ready.calls("PUT", "/models/") == []


def test_a_cancellation_before_submission_sends_no_cancel(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    steps = Steps(raise_on="training data", exc=JobCancelled())
    with pytest.raises(JobCancelled):
        azure_backend.train(spec(azure_backend), steps)
    assert ml_ready.calls("PUT", "/jobs/") == []
    assert ml_ready.calls("POST", "/cancel") == []


def test_a_missing_data_asset_names_the_dataset_and_what_to_do(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    fake_azure.training.seed_workspace()
    with pytest.raises(BackendError, match="dataset german-credit \\(latest version\\) is not "
                                           "registered in Azure ML workspace modelgate-ws: run "
                                           "provision"):
        azure_backend.train(spec(azure_backend), Steps())
    fake_azure.training.seed_data("german-credit", "1")
    with pytest.raises(BackendError, match="dataset german-credit \\(version 7\\) is not "
                                           "registered"):
        azure_backend.train(spec(azure_backend, dataset_version=7), Steps())
    lookup = fake_azure.calls("GET", "/data/german-credit/versions/7$")
    assert lookup and lookup[0].api_version == API_ASSETS
    assert fake_azure.calls("PUT", "/jobs/") == []


def test_a_pinned_dataset_version_is_the_jobs_input(azure_backend: Any,
                                                     ml_ready: FakeAzure) -> None:
    ml_ready.training.seed_data("german-credit", "2")
    azure_backend.train(spec(azure_backend, dataset_version=1), Steps())
    put = only(ml_ready, "PUT", f"/jobs/{JOB_NAME}$")
    assert put.body["properties"]["inputs"]["data"]["uri"].endswith(
        "/data/german-credit/versions/1")
    assert ml_ready.calls("GET", "/data/german-credit$") == [], "no latest-version lookup"


def test_a_job_that_logged_no_summary_is_not_registered(azure_backend: Any,
                                                         ml_ready: FakeAzure) -> None:
    ml_ready.training.plan(JOB_NAME, summary=None)
    with pytest.raises(BackendError, match="completed without logging its summary \\(run tag "
                                           "modelgate.summary\\)"):
        azure_backend.train(spec(azure_backend), Steps())
    assert ml_ready.calls("PUT", "/models/") == []


def test_the_signature_names_the_version_the_registration_takes(
        azure_backend: Any, ml_ready: FakeAzure) -> None:
    ml_ready.training.seed_model_version(MODEL, "1", {"modelgate_job": "an-earlier-job"})
    ml_ready.training.seed_model_version(MODEL, "2", {"modelgate_job": "another-job"})
    info = azure_backend.train(spec(azure_backend), Steps())

    assert info.version == "3"
    put = only(ml_ready, "PUT", f"/models/{MODEL}/versions/3$")
    signature = json.loads(put.body["properties"]["properties"]["modelgate.signature"])
    assert signature["version"] == "3"
    assert signature["example"] == DEFAULT_SIGNATURE["example"]
    assert signature["classes"] == ["bad", "good"]


def test_a_job_that_logged_no_signature_is_not_registered(azure_backend: Any,
                                                           ml_ready: FakeAzure) -> None:
    ml_ready.training.plan(JOB_NAME, signature=None)
    with pytest.raises(BackendError, match=r"without logging the model's signature \(run tag "
                                           r"modelgate.signature\), which the smoke test"):
        azure_backend.train(spec(azure_backend), Steps())
    assert ml_ready.calls("PUT", "/models/") == []


def test_a_slot_of_a_trained_version_passes_its_smoke_test(fake_azure: FakeAzure,
                                                           tmp_path: Path) -> None:
    """Train → deploy → smoke test on the fake: the registered signature is what the smoke
    test scores and judges by."""
    from app.backends.base import SlotRef, SlotSpec
    from tests.azure import fakes_endpoints as fe

    backend = fe.slots_backend(fake_azure, tmp_path, smoke_test_via="direct")
    fake_azure.training.seed_workspace()
    fake_azure.training.seed_data("german-credit", "1")
    fake_azure.training.seed_code(backend.ctx.config.model.to_dict())
    info = backend.train(spec(backend), Steps())

    ref = SlotRef("slot0001", "staging", "staging", "blue", info.model_name, info.version)
    backend.create_slot(SlotSpec(ref, 1, {"cpu": 0.25, "memory_mb": 512}), Steps())
    endpoint = f"{backend.ctx.workspace}-staging"
    fe.mark_ready(fake_azure, endpoint, "blue")
    backend.wait_ready(ref, 1, 5, lambda: None)
    before = len(fake_azure.requests)
    result = backend.smoke_test(ref, fe.endpoint_keys(fake_azure, endpoint)["primaryKey"])

    assert result.model_version == info.version == "1"
    assert set(result.probabilities) == set(DEFAULT_SIGNATURE["classes"])
    scored = [r for r in fake_azure.requests[before:] if r.url.endswith("/score")]
    assert scored and all(r.body == {"data": [DEFAULT_SIGNATURE["example"]]} for r in scored)


def test_an_unreadable_run_history_still_reports_the_status_changes(
        azure_backend: Any, ml_ready: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    ml_ready.training.plan(JOB_NAME, statuses=["Queued", "Running", "Running", "Completed"])
    # the first two reads of the run details are refused; the later ones answer
    ml_ready.fail("GET", "/runs/[^/]+/details$", 403, "AuthorizationFailed",
                  "The client does not have authorization to read run history.", times=2)
    steps = Steps()
    info = azure_backend.train(spec(azure_backend), steps)
    statuses = [t.rsplit(": ", 1)[1] for t in steps.texts()
                if t.startswith(f"Azure ML job {JOB_NAME}:")]
    assert statuses == ["Queued", "Running", "Completed"]
    assert info.summary["metrics"]["roc_auc"] == DEFAULT_SUMMARY["metrics"]["roc_auc"]
    assert any("run history unreadable" in r.getMessage() for r in caplog.records)


def test_a_job_still_running_at_the_follow_limit_is_left_to_the_retry(
        azure_backend: Any, ml_ready: FakeAzure, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.backends.azure import training

    monkeypatch.setattr(training, "FOLLOW_SECONDS", 0.0)
    ml_ready.training.plan(JOB_NAME, statuses=["Running"])
    with pytest.raises(TransientBackendError, match="still Running .* a retry of this job "
                                                    "follows it on"):
        azure_backend.train(spec(azure_backend), Steps())
    assert ml_ready.calls("POST", "/cancel") == [], "the job keeps running for the retry"


def test_new_training_code_is_uploaded_to_the_workspace_storage(
        azure_backend: Any, fake_azure: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    """The SDK uploads a new code snapshot with Blob Storage's own client, which does not use
    ``transport=``: the upload is answered at the requests level."""
    import responses

    caplog.set_level(logging.DEBUG)
    fake_azure.training.seed_workspace()
    fake_azure.training.seed_data("german-credit", "1")
    blobs: dict[str, bytes] = {}
    metadata: dict[str, str] = {}

    def blob(request: Any) -> tuple[int, dict[str, str], bytes]:
        path = request.url.split("?", 1)[0].removeprefix(f"{BLOB}/{UPLOAD_CONTAINER}/")
        assert "sig=FAKEUPLOADSIGNATURE" in request.url, "the SAS from startPendingUpload"
        if request.method == "HEAD":
            return 404, {"x-ms-error-code": "BlobNotFound"}, b""
        if "comp=metadata" in request.url:
            metadata.update({k[len("x-ms-meta-"):]: v for k, v in request.headers.items()
                             if k.lower().startswith("x-ms-meta-")})
            return 200, {"ETag": '"0x2"'}, b""
        assert request.headers["x-ms-blob-type"] == "BlockBlob"
        body = request.body if isinstance(request.body, bytes) else request.body.read()
        blobs[path] = body
        return 201, {"ETag": '"0x1"', "Last-Modified": "Sun, 06 Dec 2026 22:00:00 GMT"}, b""

    with responses.RequestsMock() as storage:
        for method in ("HEAD", "PUT"):
            storage.add_callback(method, re.compile(re.escape(f"{BLOB}/{UPLOAD_CONTAINER}/") +
                                                    ".*"), callback=blob)
        steps = Steps()
        azure_backend.train(spec(azure_backend), steps)

    version = fake_azure.training.uploads[0]
    start = only(fake_azure, "POST", f"/codes/modelgate-training-code/versions/{version}/"
                                     "startPendingUpload$")
    assert start.api_version == API_CODES
    assert start.body == {"pendingUploadType": "TemporaryBlobReference"}
    # what went up: the training code (no panel), the settings
    assert set(blobs) >= {"code/app/__init__.py", "code/app/ml/train_job.py",
                          "code/app/ml/training.py", "code/config.json"}
    assert not any("app/backends" in p or "app/serving" in p for p in blobs)
    assert b"flask" not in blobs["code/app/__init__.py"].lower()
    assert json.loads(blobs["code/config.json"]) == azure_backend.ctx.config.model.to_dict()
    assert metadata["upload_status"] == "completed"
    assert metadata["name"] == "modelgate-training-code" and metadata["version"] == version
    code = only(fake_azure, "PUT", f"/codes/modelgate-training-code/versions/{version}$")
    assert code.body["properties"]["codeUri"] == f"{BLOB}/{UPLOAD_CONTAINER}/code"
    job = only(fake_azure, "PUT", f"/jobs/{JOB_NAME}$")
    assert job.body["properties"]["codeId"] == \
        f"{WS_ID}/codes/modelgate-training-code/versions/{version}"
    no_secrets(caplog, steps)


def test_the_code_snapshot_is_the_training_code_versioned_by_content(tmp_path: Path) -> None:
    from app.backends.azure.training_assets import stage_code

    settings = {"name": "german-credit", "seed": 42}
    first = stage_code(tmp_path / "a", settings)
    same = stage_code(tmp_path / "b", settings)
    other = stage_code(tmp_path / "c", {**settings, "seed": 7})
    assert first.version == same.version != other.version
    files = sorted(p.relative_to(first.path).as_posix() for p in first.path.rglob("*")
                   if p.is_file())
    assert "app/ml/train_job.py" in files and "config.json" in files
    assert all(f.startswith("app/ml/") or f in ("app/__init__.py", "config.json")
               for f in files)


def test_the_training_entry_writes_an_mlflow_model_with_the_serving_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the Azure ML job runs, run here on the real data with small settings; with an
    MLflow tracking URI (Azure ML sets one in every job) the metrics and the summary tag are
    logged to the run."""
    from app.ml import train_job
    from app.ml.package import load_package
    from app.ml.registry import _import_mlflow

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"name": MODEL, "cv_folds": 2, "importance_repeats": 1,
                                  "candidates": [{"family": "logistic_regression"}]}))
    mlflow = _import_mlflow()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=tracking)
    # Azure ML starts the job's run and names it (and the store) in the environment; an
    # earlier set_tracking_uri elsewhere in this process must not divert the logging.
    azure_run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # (it sets the variable)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MLFLOW_RUN_ID", azure_run.info.run_id)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "model"
    code = train_job.main(["--data", str(root / "data"), "--out", str(out), "--config",
                           str(config), "--dataset-name", "german-credit",
                           "--dataset-version", "3"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(train_job.SUMMARY_PREFIX)
    summary = json.loads(last[len(train_job.SUMMARY_PREFIX):])
    assert summary["dataset"]["version"] == 3
    assert set(summary["metrics"]) == set(train_job.SUMMARY_METRICS)

    assert (out / "MLmodel").is_file() and "sklearn" in (out / "MLmodel").read_text()
    package = load_package(out / "package")
    assert package.signature.name == MODEL and package.signature.version is None
    assert package.signature.threshold == pytest.approx(summary["threshold"])

    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(previous)
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert [r.info.run_id for r in runs] == [azure_run.info.run_id]
    run = runs[0]
    assert run.data.metrics["roc_auc"] == pytest.approx(summary["metrics"]["roc_auc"])
    assert json.loads(run.data.tags["modelgate.summary"]) == summary
    # the signature the registration carries for the smoke test: the package's own
    assert json.loads(run.data.tags["modelgate.signature"]) == package.signature.to_dict()

    # bad settings: exit status 2, the message names the key
    config.write_text(json.dumps({"cv_folds": 1}))
    assert train_job.main(["--data", str(root / "data"), "--out", str(tmp_path / "m2"),
                           "--config", str(config)]) == 2
    assert "model.cv_folds" in capsys.readouterr().err


def test_the_train_service_leaves_a_job_still_running_to_the_retry(
        tmp_path: Path, redis_server: Any, sqlite_url: str, azure_backend: Any,
        ml_ready: FakeAzure, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real train service: a transient error reaches the job runner (which queues
    the job again) instead of failing the job; the retry follows the same Azure ML job; a
    job that failed in Azure ML still fails the panel job with its message."""
    import yaml

    from app.backends.azure import training
    from app.errors import ValidationError
    from app.services.training import run_train
    from tests.azure.conftest import azure_pipeline_settings
    from tests.conftest import build_app

    config_file = tmp_path / "pipeline.yml"
    config_file.write_text(yaml.safe_dump(azure_pipeline_settings()))
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(config_file))
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    monkeypatch.setattr(training, "FOLLOW_SECONDS", 0.0)

    class Reporter:
        def __init__(self, job_id: str) -> None:
            self.job_id, self.lines, self.steps = job_id, [], Steps()

        def progress(self, percent: int, step: str) -> None:
            self.steps(percent, step)

        def log(self, message: str, *, level: str = "INFO") -> None:
            self.lines.append(message)

        def check_cancelled(self) -> None:
            pass

    with app.app_context():
        app.extensions["modelgate.backend"] = azure_backend
        ml_ready.training.plan(JOB_NAME, statuses=["Queued"])
        with pytest.raises(TransientBackendError, match="still Queued"):
            run_train(Reporter(JOB_ID), {})
        ml_ready.training.plan(JOB_NAME, statuses=["Running", "Completed"])
        retry = Reporter(JOB_ID)
        result = run_train(retry, {})
        assert len(ml_ready.calls("PUT", "/jobs/")) == 1, "the retry followed the same job"
        assert any("submitted by an earlier attempt (Running)" in t for t in retry.steps.texts())
        assert result["model"]["version"] == "1" and "reused" not in result

        other = "f0e1d2c3b4a5"
        ml_ready.training.plan(f"modelgate-train-{other}", statuses=["Failed"],
                               error=("UserError", "Out of memory while fitting"))
        with pytest.raises(ValidationError, match="failed: UserError: Out of memory"):
            run_train(Reporter(other), {})
