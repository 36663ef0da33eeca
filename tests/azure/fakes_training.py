"""Azure ML training as the fake Azure answers it: jobs that go through their states on
successive GETs, cancel, the run history's run details with log files and tags, the log files
themselves (read-only blob URLs), the workspace discovery document, and the model, data, code
and environment containers Azure ML keeps beside their versions.

Shapes after azure-rest-api-specs (machinelearningservices, stable examples: Job/get.json,
Job/cancel.json, ModelVersion/createOrUpdate.json, ModelContainer/get.json) and the run
history's RunDetails model in azure-ai-ml (``_restclient/runhistory``).

A test drives a job through :class:`TrainingFake` (``fake.training``): the statuses its GETs
answer, the log lines that appear, the summary tag the job logs, a failure's error.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tests.azure.fake_azure import ARM, SUBSCRIPTION, Answer, FakeAzure, Recorded, not_found

WORKSPACE = "modelgate-ws"
RESOURCE_GROUP = "modelgate-rg"
WS_ID = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
         f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
REGION_API = "https://westeurope.api.azureml.ms"
DISCOVERY = f"{REGION_API}/discovery/workspaces/0f5e1c2a-4b7d-4e8f-9a1b-2c3d4e5f6a7b"
BLOB = "https://modelgatews1234.blob.core.windows.net"
# What Azure puts in log file URLs: a read-only SAS; tests check it never reaches a log line.
LOG_SAS = ("sv=2019-07-07&sr=b&sig=FAKESASSIGNATURE0123456789abcdef%3D&st=2026-12-01"
           "&se=2026-12-02&sp=r")
UPLOAD_CONTAINER = "azureml-blobstore-0f5e1c2a-4b7d-4e8f-9a1b-2c3d4e5f6a7b"
UPLOAD_SAS = "sv=2021-10-04&se=2026-12-07&sr=c&sp=rcwl&sig=FAKEUPLOADSIGNATURE%3D"
SUMMARY_TAG = "modelgate.summary"
SIGNATURE_TAG = "modelgate.signature"

DEFAULT_SUMMARY: dict[str, Any] = {
    "family": "logistic_regression",
    "threshold": 0.1420541790919705,
    "metrics": {"cv_roc_auc": 0.7158779761904763, "roc_auc": 0.7514285714285713,
                "accuracy": 0.52, "f1_bad": 0.5294117647058825, "brier": 0.17536039337461087,
                "expected_cost": 0.6},
    "dataset": {"name": "german-credit", "version": 1,
                "sha256": "0eb5e4b3beade418c774282c9973d384bb6e36f4416506b7b76d22f303412e62"},
}
# The serving package's signature.json as app.ml.train_job logs it (a shortened field list;
# the version is empty until the registry assigns one).
DEFAULT_SIGNATURE: dict[str, Any] = {
    "name": "german-credit", "version": None, "target": "Risk", "classes": ["bad", "good"],
    "positive_class": "bad", "threshold": 0.1420541790919705, "max_rows": 1000,
    "fields": [{"name": "Age", "type": "integer", "minimum": 18, "maximum": 120,
                "nullable": False},
               {"name": "Sex", "type": "category", "categories": ["female", "male"],
                "nullable": False},
               {"name": "Credit amount", "type": "number", "minimum": 0, "maximum": 1000000,
                "nullable": False}],
    "example": {"Age": 35, "Sex": "female", "Credit amount": 2500},
}
DEFAULT_LOG = [
    "2026-12-06 22:00:01 INFO app.ml.train_job   0% loading data",
    "2026-12-06 22:00:02 INFO app.ml.train_job   5% cross-validating logistic_regression",
    "2026-12-06 22:00:05 INFO app.ml.train_job 100% trained",
    "2026-12-06 22:00:07 INFO app.ml.train_job wrote the MLflow model and the serving package",
]


@dataclass
class JobPlan:
    """How one Azure ML job behaves: the statuses successive GETs answer (the last repeats),
    its log lines (half of them once Running, all once terminal), the tags its run logs and,
    for a failure, the run's error."""

    statuses: list[str] = field(default_factory=lambda: ["Queued", "Running", "Completed"])
    log_lines: list[str] = field(default_factory=lambda: list(DEFAULT_LOG))
    summary: dict[str, Any] | None = field(default_factory=lambda: copy.deepcopy(DEFAULT_SUMMARY))
    signature: dict[str, Any] | None = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_SIGNATURE))
    error: tuple[str, str] | None = None
    gets: int = 0
    cancelled: bool = False

    def status(self) -> str:
        if self.cancelled:
            return "Canceled"
        return self.statuses[min(self.gets, len(self.statuses)) - 1] if self.gets else \
            self.statuses[0]


class TrainingFake:
    """Per-test state of the Azure ML jobs (``fake.training``)."""

    def __init__(self, fake: FakeAzure) -> None:
        self.fake = fake
        self.plans: dict[str, JobPlan] = {}
        self.default = JobPlan()
        self.uploads: list[str] = []  # code versions an upload location was asked for

    def plan(self, job: str, **kwargs: Any) -> JobPlan:
        """Set how the job named ``job`` behaves once submitted (or seeded)."""
        self.plans[job] = JobPlan(**kwargs)
        return self.plans[job]

    def plan_of(self, job: str) -> JobPlan:
        return self.plans.setdefault(job, copy.deepcopy(self.default))

    # ------------------------------------------------------------------ seeding

    def seed_workspace(self) -> None:
        """The workspace as provisioning leaves it (the SDK reads its discovery URL)."""
        self.fake.put_resource(WS_ID, {
            "location": "westeurope",
            "properties": {"friendlyName": WORKSPACE, "discoveryUrl": DISCOVERY,
                           "mlFlowTrackingUri": f"azureml://westeurope.api.azureml.ms/mlflow/"
                                                f"v1.0{WS_ID}",
                           "workspaceId": "0f5e1c2a-4b7d-4e8f-9a1b-2c3d4e5f6a7b"}})

    def seed_data(self, name: str, version: str, kind: str = "uri_file") -> None:
        """A registered data asset version (as provisioning registers the dataset)."""
        path = (f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/"
                f"workspaces/{WORKSPACE}/datastores/workspaceblobstore/paths/"
                f"modelgate/{name}/{version}/data.csv")
        self.fake.put_resource(f"{WS_ID}/data/{name}/versions/{version}", {
            "properties": {"dataType": kind, "dataUri": path, "isAnonymous": False,
                           "isArchived": False, "tags": {}, "properties": {}}})
        _touch_container(self.fake, f"{WS_ID}/data/{name}", version)

    def seed_code(self, training_config: dict[str, Any]) -> str:
        """The training code snapshot for these settings, as if uploaded by an earlier job
        (the SDK finds it by content hash and uploads nothing); returns its version."""
        import tempfile
        from pathlib import Path

        from azure.ai.ml.entities._assets import Code

        from app.backends.azure.training_assets import CODE_NAME, stage_code

        with tempfile.TemporaryDirectory() as tmp:
            snapshot = stage_code(Path(tmp) / "code", training_config)
            digest = Code(name=CODE_NAME, version=snapshot.version,
                          path=str(snapshot.path))._hash_sha256
        self.fake.put_resource(f"{WS_ID}/codes/{CODE_NAME}/versions/{snapshot.version}", {
            "properties": {"codeUri": f"{BLOB}/{UPLOAD_CONTAINER}/code", "isAnonymous": False,
                           "properties": {"hash_sha256": digest, "hash_version": "202208"}}})
        return snapshot.version

    def seed_model_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        self.fake.put_resource(f"{WS_ID}/models/{name}/versions/{version}", {
            "properties": {"modelType": "mlflow_model", "tags": tags, "properties": {},
                           "flavors": copy.deepcopy(MLFLOW_FLAVORS),
                           "modelUri": "azureml://jobs/x/outputs/model",
                           "isAnonymous": False, "isArchived": False}})
        _touch_container(self.fake, f"{WS_ID}/models/{name}", version)

    def seed_job(self, name: str, plan: JobPlan | None = None) -> None:
        """A job an earlier attempt submitted."""
        self.fake.put_resource(f"{WS_ID}/jobs/{name}", _job_resource(name, {
            "jobType": "Command", "command": "python -m app.ml.train_job",
            "computeId": f"{WS_ID}/computes/cpu-cluster",
            "environmentId": f"{WS_ID}/environments/modelgate-training/versions/1",
            "experimentName": "german-credit", "tags": {}}))
        if plan is not None:
            self.plans[name] = plan

    # ------------------------------------------------------------------ answering

    def job_get(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        resource = fake.get(request.path)
        if resource is None:
            return not_found(request.path)
        plan = self.plan_of(match["job"])
        plan.gets += 1
        answered = copy.deepcopy(resource)
        answered["properties"]["status"] = plan.status()
        return Answer(200, answered)

    def job_cancel(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        if fake.get(request.path.rsplit("/", 1)[0]) is None:
            return not_found(request.path)
        self.plan_of(match["job"]).cancelled = True
        return Answer(202, None, {"Location": f"{ARM}{request.path}Result/op1?api-version="
                                              f"{request.api_version}", "Retry-After": "0"})

    def cancel_result(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        return Answer(200, None)

    def code_versions(self, fake: FakeAzure, request: Recorded, match: re.Match[str]
                      ) -> Answer:
        """A code asset's versions, filtered by content hash as Azure ML filters them."""
        prefix = request.path.lower().rstrip("/") + "/"
        wanted = request.query.get("hash")
        items = [r for key, r in fake.resources.items()
                 if key.startswith(prefix) and "/" not in key[len(prefix):]
                 and (wanted is None or ((r.get("properties") or {}).get("properties") or {})
                      .get("hash_sha256") == wanted)]
        return Answer(200, {"value": items})

    def start_pending_upload(self, fake: FakeAzure, request: Recorded, match: re.Match[str]
                             ) -> Answer:
        """Where a new code version's files go: a container SAS on the workspace storage."""
        self.uploads.append(match["version"])
        container = f"{BLOB}/{UPLOAD_CONTAINER}"
        return Answer(200, {
            "blobReferenceForConsumption": {
                "blobUri": container,
                "storageAccountArmId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/"
                                       f"{RESOURCE_GROUP}/providers/Microsoft.Storage/"
                                       "storageAccounts/modelgatews1234",
                "credential": {"credentialType": "SAS", "sasUri": f"{container}?{UPLOAD_SAS}"}},
            "pendingUploadId": "9f0e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f",
            "pendingUploadType": "TemporaryBlobReference"})

    def discovery(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        return Answer(200, {"api": REGION_API, "catalog": REGION_API, "experimentation":
                            REGION_API, "gallery": REGION_API, "history": REGION_API,
                            "hyperdrive": REGION_API, "labeling": REGION_API,
                            "modelmanagement": REGION_API, "pipelines": REGION_API,
                            "studiohostcloudurl": "https://ml.azure.com"})

    def run_details(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        job = match["job"]
        if fake.get(f"{WS_ID}/jobs/{job}") is None:
            return Answer(404, {"error": {"code": "UserError", "message":
                                          f"Run {job} was not found"}})
        plan = self.plan_of(job)
        status = plan.status()
        body: dict[str, Any] = {"runId": job, "status": status, "target": "cpu-cluster",
                                "tags": {}, "properties": {}, "logFiles": {}, "warnings": []}
        if status in ("Running", "Finalizing", "Completed", "Failed", "Canceled"):
            body["logFiles"] = {
                "user_logs/std_log.txt": f"{BLOB}/azureml/ExperimentRun/dcid.{job}/"
                                         f"user_logs/std_log.txt?{LOG_SAS}",
                "system_logs/lifecycler/execution-wrapper.log":
                    f"{BLOB}/azureml/ExperimentRun/dcid.{job}/system_logs/lifecycler/"
                    f"execution-wrapper.log?{LOG_SAS}",
            }
        if status == "Completed":
            tags = {"mlflow.source.type": "JOB"}
            if plan.summary is not None:
                tags[SUMMARY_TAG] = json.dumps(plan.summary, sort_keys=True)
            if plan.signature is not None:
                tags[SIGNATURE_TAG] = json.dumps(plan.signature, sort_keys=True,
                                                 separators=(",", ":"))
            body["tags"] = tags
        if status == "Failed" and plan.error:
            code, message = plan.error
            body["error"] = {"error": {"code": code, "message": message, "severity": None},
                             "time": "2026-12-06T22:10:00Z"}
        return Answer(200, body)

    def log_file(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        plan = self.plan_of(match["job"])
        if match["file"] != "user_logs/std_log.txt":
            raise AssertionError(f"the backend read a log it should not stream: {match['file']}")
        lines = plan.log_lines
        if plan.status() == "Running":
            lines = lines[: (len(lines) + 1) // 2]
        return Answer(200, ("\n".join(lines) + "\n").encode(),
                      {"Content-Type": "application/octet-stream", "x-ms-blob-type": "BlockBlob"})


def _job_resource(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    props = copy.deepcopy(properties)
    props.setdefault("status", "NotStarted")
    props["services"] = {"Studio": {"jobServiceType": "Studio", "endpoint":
                                    f"https://ml.azure.com/runs/{name}?wsid={WS_ID}"}}
    return {"id": f"{WS_ID}/jobs/{name}", "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs", "properties": props}


def _touch_container(fake: FakeAzure, container_id: str, version: str) -> None:
    """Azure ML keeps a container beside every asset's versions: latest and next version."""
    existing = fake.get(container_id) or {"properties": {"isArchived": False}}
    props = dict(existing.get("properties") or {})
    latest = props.get("latestVersion")
    if latest is None or (version.isdigit() and str(latest).isdigit()
                          and int(version) >= int(latest)) or not version.isdigit():
        props["latestVersion"] = version
    if str(props["latestVersion"]).isdigit():
        props["nextVersion"] = str(int(props["latestVersion"]) + 1)
    fake.put_resource(container_id, {**existing, "properties": props})


# What Azure ML reads from an mlflow_model's MLmodel file and answers as the version's flavors.
MLFLOW_FLAVORS = {
    "python_function": {"data": {"loader_module": "mlflow.sklearn", "python_version": "3.11",
                                 "model_path": "model.pkl", "env": "conda.yaml"}},
    "sklearn": {"data": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle",
                         "code": ""}},
}


def _on_version_put(fake: FakeAzure, resource_id: str, stored: dict[str, Any],
                    existing: dict[str, Any] | None) -> dict[str, Any]:
    container, version = resource_id.rsplit("/versions/", 1)
    _touch_container(fake, container, version)
    props = stored.setdefault("properties", {})
    if props.get("modelType") == "mlflow_model":
        props.setdefault("flavors", copy.deepcopy(MLFLOW_FLAVORS))
    return stored


def _on_job_put(fake: FakeAzure, resource_id: str, stored: dict[str, Any],
                existing: dict[str, Any] | None) -> dict[str, Any]:
    name = resource_id.rsplit("/", 1)[-1]
    return _job_resource(name, stored.get("properties") or {})


def install(fake: FakeAzure) -> None:
    """Register the training routes and hooks on a FakeAzure."""
    training = TrainingFake(fake)
    fake.training = training  # type: ignore[attr-defined]
    ws = r"/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+"
    fake.route("GET", ws + r"/jobs/(?P<job>[^/]+)$")(training.job_get)
    fake.route("POST", ws + r"/jobs/(?P<job>[^/]+)/cancel$")(training.job_cancel)
    fake.route("GET", ws + r"/jobs/(?P<job>[^/]+)/cancelResult/")(training.cancel_result)
    fake.route("GET", ws + r"/codes/[^/]+/versions$")(training.code_versions)
    fake.route("POST", ws + r"/codes/[^/]+/versions/(?P<version>[^/]+)/startPendingUpload$"
               )(training.start_pending_upload)
    fake.route("GET", r"^https://westeurope\.api\.azureml\.ms/discovery/")(training.discovery)
    fake.route("GET", r"^https://westeurope\.api\.azureml\.ms/history/v1\.0/subscriptions/"
                      r"[^/]+/resourceGroups/[^/]+" + ws + r"/runs/(?P<job>[^/]+)/details$"
               )(training.run_details)
    fake.route("GET", r"^https://modelgatews1234\.blob\.core\.windows\.net/azureml/"
                      r"ExperimentRun/dcid\.(?P<job>[^/]+)/(?P<file>.+)$")(training.log_file)
    fake.on_put(ws + r"/(models|data|codes|environments)/[^/]+/versions/[^/]+$",
                _on_version_put)
    fake.on_put(ws + r"/jobs/[^/]+$", _on_job_put)
