"""The fake Azure's online endpoints, their keys and scorers, and API Management's gateway.

Shapes after azure-rest-api-specs (machinelearningservices, stable/2024-04-01/examples:
OnlineEndpoint/KubernetesOnlineEndpoint/createOrUpdate.json, listKeys.json,
regenerateKeys.json; OnlineDeployment/KubernetesOnlineDeployment/createOrUpdate.json,
getLogs.json) and Azure ML's behaviour:
- an endpoint PUT fills in what Azure adds (scoringUri on the cluster's internal load
  balancer, swaggerUri, the two keys, kept across updates) and is refused (400) when its
  traffic names a deployment that does not exist or does not add up to 100;
- a deployment PUT answers 201 with an ``Azure-AsyncOperation`` on
  ``…/locations/<region>/mfeOperationsStatus/<id>``; the deployment stays ``Creating`` (its
  operation ``InProgress``) until a test marks it ready (:func:`mark_ready`) or failed
  (:func:`mark_failed`, with the operation's error and the container's log lines);
- a deployment taking traffic cannot be deleted (400);
- ``listKeys`` answers the keys, ``regenerateKeys`` (202 + ``Location``) replaces one,
  except that :func:`keep_keys` makes the next ones answer success and change nothing;
- the scoring URI (``http://<ILB>/api/v1/endpoint/<name>/score``) checks the endpoint's key
  (``Authorization: Bearer``), honours ``azureml-model-deployment`` (else the traffic), and
  the deployment's scorer answers like modelgate's scoring service with its model version;
- API Management's gateway (``https://<service>.azure-api.net/<api path>/score``) answers
  404 for a path no API has, 401 without a bearer token, and otherwise forwards to the
  environment's backend URL named value with the key named value, passing
  ``azureml-model-deployment`` along; each call is recorded in ``fake.apim_requests`` in the
  shape of API Management's request reports (``reports/byRequest``).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.azure import fakes_apim
from tests.azure.fake_azure import (
    ARM,
    SUBSCRIPTION,
    Answer,
    FakeAzure,
    Recorded,
    arm_error,
    not_found,
    rg_id,
)

ML = "Microsoft.MachineLearningServices"
#: The internal load balancer of the cluster's Azure ML inference router.
SCORING_HOST = "10.123.0.200"
WORKSPACE = "modelgate-ws"
APIM = "modelgate-apim-test"
API_APP_ID = "6e9a3c1f-0b5d-4c8e-9f2a-7d1b3e5c9a70"
SCORING_IMAGE = "modelgateacr.azurecr.io/modelgate-scoring:0.1.0"
LOCATION = "westeurope"
CLASSES = ("bad", "good")

_ENDPOINT = r"/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+/onlineEndpoints/[^/]+"


@dataclass
class EndpointsState:
    """What the fake keeps beside the ARM resources (one per FakeAzure)."""

    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # endpoint id -> keys
    keep_keys: int = 0  # regenerations still to answer success without changing the key
    operations: dict[str, str] = field(default_factory=dict)  # op id -> deployment id
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # deployment id -> error
    logs: dict[str, str] = field(default_factory=dict)  # deployment id -> container log
    api_environments: dict[str, str] = field(default_factory=dict)  # API path -> environment
    scored: list[dict[str, Any]] = field(default_factory=list)  # what the scorers answered
    ids: Any = field(default_factory=lambda: itertools.count(1))


def state(fake: FakeAzure) -> EndpointsState:
    found: EndpointsState = fake.endpoints_state  # type: ignore[attr-defined]
    return found


def install(fake: FakeAzure) -> None:
    fake.endpoints_state = EndpointsState()  # type: ignore[attr-defined]
    fake.route("PUT", _ENDPOINT + "$")(_put_endpoint)
    fake.on_put(_ENDPOINT + "$", _endpoint_hook)
    fake.route("PUT", _ENDPOINT + "/deployments/[^/]+$")(_put_deployment)
    fake.route("DELETE", _ENDPOINT + "/deployments/[^/]+$")(_delete_deployment)
    fake.route("GET", r"/locations/[^/]+/mfeOperationsStatus/[^/]+$")(_operation_status)
    fake.route("GET", r"/locations/[^/]+/mfeOperationResults/[^/]+$")(_operation_result)
    fake.route("POST", _ENDPOINT + "/listKeys$")(_list_keys)
    fake.route("POST", _ENDPOINT + "/regenerateKeys$")(_regenerate_keys)
    fake.route("POST", _ENDPOINT + "/deployments/[^/]+/getLogs$")(_get_logs)
    fake.route("POST", rf"^http://{re.escape(SCORING_HOST)}/api/v1/endpoint/"
                       r"(?P<endpoint>[^/]+)/score$")(_score)
    fake.route("POST", r"^https://(?P<service>[^./]+)\.azure-api\.net/(?P<path>.+)/score$"
               )(_gateway)


# --------------------------------------------------------------------------- set-up helpers


def slots_backend(fake: FakeAzure, home: Any, credential: Any = None, **azure: Any) -> Any:
    """An AzureBackend on the fake with the workspace and API Management provisioning leaves
    (``azure``: pipeline file keys; the key grace is 0 unless given). Imports nothing of
    azure.ai.ml (the panel's reads are tested in a process that must not)."""
    from app.backends.azure import AzureBackend
    from app.pipeline_config import DEFAULT_PATH, load_pipeline_config, parse_pipeline_config
    from tests.azure.fake_azure import TENANT, FakeCredential

    seed_workspace(fake)
    fakes_apim.seed_service(fake, name=APIM)
    data = load_pipeline_config(DEFAULT_PATH).to_dict()
    data["workspace"]["name"] = WORKSPACE
    data["azure"].update({"subscription_id": SUBSCRIPTION, "tenant_id": TENANT,
                          "apim_name": APIM, "apim_email": "ops@example.com",
                          "api_app_id": API_APP_ID, "scoring_image": SCORING_IMAGE,
                          "key_grace_seconds": 0, **azure})
    return AzureBackend.for_pipeline(
        parse_pipeline_config(data), credential=credential or FakeCredential(), home=home,
        client_kwargs={"transport": fake.transport(), "polling_interval": 0})


def workspace_id(name: str = WORKSPACE) -> str:
    return f"{rg_id()}/providers/{ML}/workspaces/{name}"


def endpoint_id(endpoint: str, workspace: str = WORKSPACE) -> str:
    return f"{workspace_id(workspace)}/onlineEndpoints/{endpoint}"


def deployment_id(endpoint: str, deployment: str, workspace: str = WORKSPACE) -> str:
    return f"{endpoint_id(endpoint, workspace)}/deployments/{deployment}"


def seed_workspace(fake: FakeAzure, name: str = WORKSPACE, location: str = LOCATION) -> None:
    """The Azure ML workspace (provisioning's), as ``Workspaces_Get`` answers it."""
    fake.put_resource(workspace_id(name), {
        "location": location, "identity": {"type": "SystemAssigned"},
        "sku": {"name": "Basic", "tier": "Basic"},
        "properties": {"friendlyName": name, "provisioningState": "Succeeded",
                       "discoveryUrl": f"https://{location}.api.azureml.ms/discovery"}})


def register_model(fake: FakeAzure, name: str, version: str,
                   classes: tuple[str, ...] = CLASSES, workspace: str = WORKSPACE,
                   signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """A registered MLflow model version carrying modelgate's signature (training's)."""
    signature = signature if signature is not None else {
        "name": name, "version": version, "classes": list(classes),
        "example": {"Age": 30, "Sex": "male", "Credit amount": 1000}}
    return fake.put_resource(f"{workspace_id(workspace)}/models/{name}/versions/{version}", {
        "properties": {"modelType": "mlflow_model", "isArchived": False,
                       "modelUri": f"azureml://jobs/train-{version}/outputs/artifacts/paths/model",
                       "properties": {"modelgate.signature": json.dumps(signature)},
                       "tags": {}}})


def publish_api(fake: FakeAzure, service: str, api: str, path: str, environment: str) -> None:
    """An API on API Management's gateway serving ``environment``, PUT as a publish would."""
    _apim_put(fake, f"{fakes_apim.service_id(name=service)}/apis/{api}", {
        "properties": {"displayName": api, "path": path, "protocols": ["https"],
                       "subscriptionRequired": False}})
    state(fake).api_environments[path.strip("/")] = environment


def set_named_value(fake: FakeAzure, service: str, name: str, value: str,
                    secret: bool = True) -> None:
    """A named value written as API Management's API takes it (what gateway_use_key does)."""
    _apim_put(fake, f"{fakes_apim.service_id(name=service)}/namedValues/{name}", {
        "properties": {"displayName": name, "value": value, "secret": secret}})


def _apim_put(fake: FakeAzure, path: str, body: dict[str, Any]) -> None:
    """A PUT through the fake as the SDK sends it (API Management's fake answers it)."""
    url = f"{ARM}{path}?api-version=2024-05-01"
    answer = fake.answer(Recorded("PUT", url, path, {"api-version": "2024-05-01"},
                                  {"content-type": "application/json", "if-match": "*"}, body))
    assert answer.status in (200, 201, 202), answer.body


def mark_ready(fake: FakeAzure, endpoint: str, deployment: str,
               workspace: str = WORKSPACE) -> None:
    """The deployment's instances passed their readiness probe: Succeeded."""
    _set_state(fake, deployment_id(endpoint, deployment, workspace), "Succeeded")


def mark_failed(fake: FakeAzure, endpoint: str, deployment: str, code: str, message: str,
                logs: str = "", workspace: str = WORKSPACE) -> None:
    """The deployment failed with Azure ML's error (on its operation) and container log."""
    resource = deployment_id(endpoint, deployment, workspace)
    state(fake).failures[resource.lower()] = (code, message)
    if logs:
        state(fake).logs[resource.lower()] = logs
    _set_state(fake, resource, "Failed")


def keep_keys(fake: FakeAzure, times: int = 1) -> None:
    """The next ``times`` regenerateKeys answer success and leave the key as it was."""
    state(fake).keep_keys += times


def endpoint_keys(fake: FakeAzure, endpoint: str, workspace: str = WORKSPACE) -> dict[str, str]:
    return dict(state(fake).keys[endpoint_id(endpoint, workspace).lower()])


def named_value(fake: FakeAzure, service: str, name: str) -> str | None:
    """A named value's value as API Management holds it now (secret or not; a Key Vault
    reference as it last resolved)."""
    entry = fakes_apim.state(fake, name=service).named_values.get(name.lower())
    return None if entry is None else str(entry.get("_resolved", entry.get("value")))


def _current_api(fake: FakeAzure, service: str, path: str) -> tuple[str, str] | None:
    """(name, policy XML) of the API API Management serves at ``path``."""
    for api in fakes_apim.state(fake, name=service).apis.values():
        revision = api.revisions.get(api.current)
        if revision is not None and str(revision.properties.get("path", "")).strip("/") == path:
            return str(api.name), str(revision.policy or "")
    return None


def _set_state(fake: FakeAzure, resource_id: str, provisioning: str) -> None:
    resource = fake.get(resource_id)
    assert resource is not None, f"no deployment {resource_id}"
    resource = copy.deepcopy(resource)
    resource.setdefault("properties", {})["provisioningState"] = provisioning
    fake.put_resource(resource_id, resource)


# --------------------------------------------------------------------------- ARM handlers


def _endpoint_of(path: str) -> str:
    match = re.search(r"^(.*/onlineEndpoints/[^/]+)", path, re.I)
    assert match, path
    return match.group(1)


def _put_endpoint(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    body = request.body if isinstance(request.body, dict) else {}
    traffic = (body.get("properties") or {}).get("traffic") or {}
    resource = request.path.rstrip("/")
    for name in traffic:
        if fake.get(f"{resource}/deployments/{name}") is None:
            return arm_error(400, "BadArgument", f"Deployment '{name}' does not exist for "
                                                 "traffic rule.")
    if traffic and sum(int(v) for v in traffic.values()) != 100:
        return arm_error(400, "BadArgument", "Traffic rules of an endpoint must add up to 100.")
    return fake._arm_put(request)


def _endpoint_hook(fake: FakeAzure, resource_id: str, body: dict[str, Any],
                   existing: dict[str, Any] | None) -> dict[str, Any]:
    """What Azure ML fills in: the scoring URI on the cluster's inference router, the keys."""
    name = resource_id.rsplit("/", 1)[-1]
    props = body.setdefault("properties", {})
    props["authMode"] = str(props.get("authMode") or "Key")
    props["scoringUri"] = f"http://{SCORING_HOST}/api/v1/endpoint/{name}/score"
    props["swaggerUri"] = f"http://{SCORING_HOST}/api/v1/endpoint/{name}/swagger.json"
    props.setdefault("traffic", {})
    body["kind"] = body.get("kind") or "Kubernetes"
    state(fake).keys.setdefault(resource_id.lower(), {"primaryKey": _new_key(),
                                                      "secondaryKey": _new_key()})
    return body


def _put_deployment(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    resource = request.path.rstrip("/")
    endpoint = fake.get(_endpoint_of(resource))
    if endpoint is None:
        return not_found(_endpoint_of(resource))
    body = copy.deepcopy(request.body) if isinstance(request.body, dict) else {}
    model = str((body.get("properties") or {}).get("model") or "")
    if fake.get(model) is None:
        return arm_error(400, "UserError", f"Model {model.rsplit('/models/', 1)[-1]} was not "
                                           "found in the workspace.")
    existing = fake.get(resource)
    body.update({"id": resource, "name": resource.rsplit("/", 1)[-1],
                 "type": f"{ML}/workspaces/onlineEndpoints/deployments"})
    body.setdefault("properties", {})["provisioningState"] = \
        "Updating" if existing else "Creating"
    stored = fake.put_resource(resource, body)
    st = state(fake)
    st.failures.pop(resource.lower(), None)
    op = f"{uuid.UUID(int=next(st.ids))}"
    st.operations[op] = resource
    location = endpoint.get("location") or LOCATION
    return Answer(200 if existing else 201, stored, {
        "Azure-AsyncOperation": f"{ARM}/subscriptions/{SUBSCRIPTION}/providers/{ML}/locations/"
                                f"{location}/mfeOperationsStatus/{op}?api-version="
                                f"{request.api_version}"})


def _operation_status(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    op = request.path.rstrip("/").rsplit("/", 1)[-1]
    resource_id = state(fake).operations.get(op)
    if resource_id is None:
        return not_found(request.path)
    deployment = fake.get(resource_id)
    provisioning = str(((deployment or {}).get("properties") or {}).get("provisioningState"))
    if deployment is None or provisioning == "Failed":
        code, message = state(fake).failures.get(resource_id.lower(),
                                                 ("DeploymentDeleted", "deleted"))
        return Answer(200, {"id": op, "name": op, "status": "Failed",
                            "error": {"code": code, "message": message}})
    if provisioning == "Succeeded":
        return Answer(200, {"id": op, "name": op, "status": "Succeeded"})
    return Answer(200, {"id": op, "name": op, "status": "InProgress"}, {"Retry-After": "0"})


def _delete_deployment(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    resource = request.path.rstrip("/")
    endpoint = fake.get(_endpoint_of(resource)) or {}
    name = resource.rsplit("/", 1)[-1].lower()
    traffic = {k.lower(): int(v) for k, v in
               ((endpoint.get("properties") or {}).get("traffic") or {}).items()}
    if traffic.get(name):
        return arm_error(400, "BadArgument", f"Deployment {name} has {traffic[name]}% of the "
                                             "endpoint's traffic and cannot be deleted.")
    return fake._arm_delete(request)


def _list_keys(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    endpoint = _endpoint_of(request.path)
    keys = state(fake).keys.get(endpoint.lower())
    if keys is None or fake.get(endpoint) is None:
        return not_found(endpoint)
    return Answer(200, dict(keys))


def _regenerate_keys(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    endpoint = _endpoint_of(request.path)
    keys = state(fake).keys.get(endpoint.lower())
    if keys is None or fake.get(endpoint) is None:
        return not_found(endpoint)
    body = request.body if isinstance(request.body, dict) else {}
    which = {"primary": "primaryKey", "secondary": "secondaryKey"}.get(
        str(body.get("keyType", "")).lower())
    if which is None:
        return arm_error(400, "BadArgument", "keyType must be Primary or Secondary.")
    st = state(fake)
    if st.keep_keys > 0:  # success, and the very same key (the current value was sent along)
        st.keep_keys -= 1
    else:
        keys[which] = _new_key()
    op = f"{uuid.UUID(int=next(st.ids))}"
    return Answer(202, None, {
        "Location": f"{ARM}/subscriptions/{SUBSCRIPTION}/providers/{ML}/locations/{LOCATION}/"
                    f"mfeOperationResults/{op}?api-version={request.api_version}",
        "Retry-After": "0"})


def _operation_result(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    return Answer(200, {})


def _get_logs(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    resource = request.path.rstrip("/").removesuffix("/getLogs")
    if fake.get(resource) is None:
        return not_found(resource)
    body = request.body if isinstance(request.body, dict) else {}
    lines = state(fake).logs.get(resource.lower(), "").splitlines()
    tail = int(body.get("tail") or len(lines) or 1)
    return Answer(200, {"content": "\n".join(lines[-tail:])})


# --------------------------------------------------------------------------- data plane


def _score(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    """The cluster's inference router for one endpoint, then the deployment's scorer."""
    name = match.group("endpoint")
    endpoint_key = next((k for k in state(fake).keys if k.endswith(f"/onlineendpoints/"
                                                                   f"{name.lower()}")), None)
    endpoint = fake.get(endpoint_key) if endpoint_key else None
    if endpoint is None or endpoint_key is None:
        return Answer(404, {"message": f"endpoint {name} not found"})
    keys = state(fake).keys[endpoint_key]
    given = request.headers.get("authorization", "").removeprefix("Bearer ")
    if not given or given not in (keys["primaryKey"], keys["secondaryKey"]):
        return Answer(401, {"message": "Unauthorized"})
    wanted = request.headers.get("azureml-model-deployment", "").lower()
    traffic = {k.lower(): int(v) for k, v in
               ((endpoint.get("properties") or {}).get("traffic") or {}).items() if int(v)}
    if not wanted:
        if not traffic:
            return Answer(404, {"message": "No valid deployments to route to."})
        wanted = max(traffic, key=lambda k: traffic[k])
    deployment = fake.get(f"{endpoint_key}/deployments/{wanted}")
    if deployment is None:
        return Answer(404, {"message": f"deployment {wanted} not found"})
    props = deployment.get("properties") or {}
    if props.get("provisioningState") != "Succeeded":
        return Answer(503, {"message": "upstream connect error: no healthy upstream"})
    model = fake.get(str(props.get("model"))) or {}
    signature = json.loads(((model.get("properties") or {}).get("properties") or {})
                           .get("modelgate.signature") or "{}")
    classes = list(signature.get("classes") or CLASSES)
    model_name, _, version = str(props.get("model")).rpartition("/versions/")
    state(fake).scored.append({"endpoint": name, "deployment": wanted, "version": version})
    odds = {c: 0.0 for c in classes}
    odds[classes[0]], odds[classes[-1]] = 0.7, 0.3
    return Answer(200, {"predictions": [{"label": classes[0], "probabilities": odds}],
                        "model": {"name": model_name.rsplit("/", 1)[-1], "version": version}})


def _gateway(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    """API Management's gateway: the API by path, a bearer token, the environment's named
    values, the backend call, and a request report record."""
    service, path = match.group("service"), match.group("path").strip("/")
    api = _current_api(fake, service, path)
    started = dt.datetime.now(dt.UTC)
    if api is None:
        return Answer(404, {"statusCode": 404, "message": "Resource not found"})
    name, policy = api
    if not request.headers.get("authorization", "").startswith("Bearer "):
        answer = Answer(401, {"statusCode": 401,
                              "message": "Access denied due to missing or invalid token."})
        _report(fake, name, answer, started)
        return answer
    # the environment whose named values the policy names, else the one publish_api recorded
    found = re.search(r"\{\{([A-Za-z0-9._-]+)-backend-url\}\}", policy)
    environment = found.group(1) if found else state(fake).api_environments.get(path, "")
    url = named_value(fake, service, f"{environment}-backend-url")
    key = named_value(fake, service, f"{environment}-backend-key")
    if url is None or key is None:
        answer = Answer(500, {"statusCode": 500, "message": "Internal server error"})
        _report(fake, name, answer, started)
        return answer
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if "azureml-model-deployment" in request.headers:
        headers["azureml-model-deployment"] = request.headers["azureml-model-deployment"]
    backend_url = f"{url.rstrip('/')}/score"
    inner = Recorded("POST", backend_url, re.sub(r"^https?://[^/]+", "", backend_url), {},
                     headers, request.body)
    answer = fake.answer(inner)
    _report(fake, name, answer, started)
    return answer


def _report(fake: FakeAzure, api: str, answer: Answer, started: dt.datetime) -> None:
    elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds() * 1000
    fakes_apim.report_call(fake, api, answer.status, elapsed, started)


def _new_key() -> str:
    return secrets.token_urlsafe(32)
