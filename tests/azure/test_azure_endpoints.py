"""Slots on Azure ML through the SDKs' own requests: the endpoint with key auth, blue/green
deployments at 0% until the switch, readiness, the switch, retiring, the panel's reads and
the smoke test through API Management (tests/azure/fakes_endpoints.py plays Azure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.backends.azure import endpoints
from app.backends.base import (
    BackendError,
    ResourceConflict,
    ResourceNotFound,
    SlotNotReady,
    SlotRef,
    SlotSpec,
    SmokeTestFailed,
)
from tests.azure import fakes_endpoints as fe
from tests.azure.fake_azure import FakeAzure, FakeCredential

ROOT = Path(__file__).resolve().parents[2]
MODEL = "german-credit"
ENDPOINT = "modelgate-ws-staging"  # <workspace>-<environment>
IMAGE = fe.SCORING_IMAGE
SDK_ENDPOINTS_API = "2022-02-01-preview"  # what azure-ai-ml sends for online endpoints
DEPLOYMENTS_API = "2023-04-01-preview"  # ... and for online deployments


class Steps:
    """A progress callback that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, percent: int, step: str) -> None:
        self.calls.append((percent, step))

    def monotonic(self) -> bool:
        values = [p for p, _ in self.calls]
        return values == sorted(values) and all(0 <= p <= 100 for p in values)


def _ref(slot_id: str = "slot0001", colour: str = "blue", version: str = "3") -> SlotRef:
    return SlotRef(slot_id, "staging", "staging", colour, MODEL, version)


def _created(backend: Any, fake: FakeAzure, ref: SlotRef, replicas: int = 1) -> Any:
    fe.register_model(fake, MODEL, ref.model_version)
    return backend.create_slot(SlotSpec(ref, replicas, {"cpu": 0.25, "memory_mb": 512}),
                               Steps())


def _ready(backend: Any, fake: FakeAzure, ref: SlotRef) -> Any:
    _created(backend, fake, ref)
    fe.mark_ready(fake, ENDPOINT, ref.slot)
    return backend.wait_ready(ref, 1, 5, lambda: None)


def _serving(backend: Any, fake: FakeAzure, ref: SlotRef) -> Any:
    _ready(backend, fake, ref)
    return backend.switch_traffic("staging", ref)


def _index(fake: FakeAzure, method: str, pattern: str) -> int:
    """Where the (single) matching request stands among all requests."""
    [found] = fake.calls(method, pattern)
    return fake.requests.index(found)


# --------------------------------------------------------------------------- create


def test_create_slot_puts_a_key_auth_endpoint_then_the_deployment_at_zero_percent(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    fe.register_model(fake_azure, MODEL, "3")
    steps = Steps()
    info = backend.create_slot(SlotSpec(_ref(), 2, {"cpu": 0.5, "memory_mb": 1024}), steps)

    [endpoint] = fake_azure.calls("PUT", f"/onlineEndpoints/{ENDPOINT}$")
    assert endpoint.api_version == SDK_ENDPOINTS_API
    assert endpoint.body["properties"]["authMode"] == "Key"
    assert endpoint.body["properties"]["compute"] == backend.ctx.resource_id(
        "Microsoft.MachineLearningServices/workspaces/modelgate-ws/computes/aks-modelgate")
    assert endpoint.body["properties"]["traffic"] == {}
    [environment] = fake_azure.calls("PUT", "/environments/modelgate-scoring/versions/[0-9a-f]+$")
    assert environment.body["properties"]["image"] == IMAGE
    assert environment.body["properties"]["inferenceConfig"] == {
        "livenessRoute": {"path": "/health/live", "port": 5001},
        "readinessRoute": {"path": "/health/ready", "port": 5001},
        "scoringRoute": {"path": "/score", "port": 5001}}
    [deployment] = fake_azure.calls("PUT", f"/onlineEndpoints/{ENDPOINT}/deployments/blue$")
    assert deployment.api_version == DEPLOYMENTS_API
    props = deployment.body["properties"]
    assert props["endpointComputeType"] == "Kubernetes"
    assert props["model"].endswith("/workspaces/modelgate-ws/models/german-credit/versions/3")
    assert props["environmentId"] == environment.path
    assert props["scaleSettings"] == {"scaleType": "TargetUtilization", "minInstances": 2,
                                      "maxInstances": 4, "targetUtilizationPercentage": 70}
    assert props["containerResourceRequirements"]["containerResourceRequests"] == {
        "cpu": "0.5", "memory": "1024Mi"}
    assert props["requestSettings"]["requestTimeout"] == "PT5S"
    assert props["environmentVariables"] == {"MODELGATE_MODEL_VERSION": "3"}
    assert deployment.body["tags"]["modelgate-deployment"] == "slot0001"
    assert deployment.body["sku"] == {"name": "Default", "capacity": 2}
    # the endpoint first, and nothing touches its traffic once the deployment exists
    assert _index(fake_azure, "PUT", f"/onlineEndpoints/{ENDPOINT}$") < \
        _index(fake_azure, "PUT", "/deployments/blue$")
    assert fake_azure.requests[-1] is deployment
    assert fe.endpoint_keys(fake_azure, ENDPOINT)  # Azure gave the endpoint its keys
    assert (fake_azure.get(fe.endpoint_id(ENDPOINT)) or {})["properties"]["traffic"] == {}

    assert info.scoring_uri == f"http://{fe.SCORING_HOST}/api/v1/endpoint/{ENDPOINT}/score"
    assert (info.replicas, info.replicas_ready) == (2, 0) and "Creating" in info.detail
    assert steps.monotonic()
    assert any(f"endpoint {ENDPOINT}" in step for _, step in steps.calls)
    assert any("deployment blue" in step for _, step in steps.calls)


def test_create_slot_twice_finds_its_tagged_deployment_and_sends_no_second_put(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    first = _created(backend, fake_azure, _ref())
    puts = len(fake_azure.calls("PUT"))
    second = backend.create_slot(SlotSpec(_ref(), 1, {"cpu": 0.25, "memory_mb": 512}), Steps())
    assert second == first
    assert len(fake_azure.calls("PUT")) == puts


def test_the_deployment_put_is_the_body_azure_ai_ml_builds_for_a_kubernetes_deployment(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    from azure.ai.ml.entities import (
        KubernetesOnlineDeployment,
        OnlineRequestSettings,
        ResourceRequirementsSettings,
        ResourceSettings,
        TargetUtilizationScaleSettings,
    )

    backend = fe.slots_backend(fake_azure, tmp_path)
    fe.register_model(fake_azure, MODEL, "3")
    backend.create_slot(SlotSpec(_ref(), 2, {"cpu": 0.5, "memory_mb": 1024}), Steps())
    [ours] = fake_azure.calls("PUT", "/deployments/blue$")
    version = endpoints.scoring_environment_version(backend.ctx)
    size = ResourceSettings(cpu="0.5", memory="1024Mi")
    entity = KubernetesOnlineDeployment(
        name="green", endpoint_name=ENDPOINT, model=f"azureml:{MODEL}:3",
        environment=f"azureml:modelgate-scoring:{version}", instance_count=2,
        resources=ResourceRequirementsSettings(requests=size, limits=size),
        scale_settings=TargetUtilizationScaleSettings(min_instances=2, max_instances=4,
                                                      target_utilization_percentage=70),
        request_settings=OnlineRequestSettings(request_timeout_ms=5000,
                                               max_concurrent_requests_per_instance=1),
        description=ours.body["properties"]["description"], tags=ours.body["tags"],
        environment_variables={"MODELGATE_MODEL_VERSION": "3"}, app_insights_enabled=False)
    poller = backend.ctx.client("ml").online_deployments.begin_create_or_update(entity)
    fe.mark_ready(fake_azure, ENDPOINT, "green")  # lets the SDK's polling thread finish
    poller.result()
    [sdk] = fake_azure.calls("PUT", "/deployments/green$")
    assert sdk.api_version == ours.api_version
    assert sdk.body == ours.body


def test_a_missing_model_version_is_resource_not_found_and_creates_nothing(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    with pytest.raises(ResourceNotFound, match="german-credit version 404 is not registered"):
        backend.create_slot(SlotSpec(_ref(version="404"), 1), Steps())
    assert fake_azure.calls("PUT") == []


def test_a_colour_serving_another_slot_is_a_conflict_and_a_leftover_is_replaced(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref("slotold1"))
    with pytest.raises(ResourceConflict, match="runs slot slotold1 and takes 100%"):
        _created(backend, fake_azure, _ref("slotnew1", version="4"))
    _created(backend, fake_azure, _ref("slotgrn1", "green", "4"))  # a failed slot, left over
    backend.switch_traffic("staging", _ref("slotold1"))
    info = _created(backend, fake_azure, _ref("slotgrn2", "green", "5"))
    assert info.ref.id == "slotgrn2"
    # one scoring environment version, registered once and reused
    assert len(fake_azure.calls("PUT", "/environments/modelgate-scoring/versions/")) == 1
    tags = (fake_azure.get(fe.deployment_id(ENDPOINT, "green")) or {})["tags"]
    assert tags["modelgate-deployment"] == "slotgrn2" and tags["modelgate-model"] == \
        "german-credit:5"


def test_an_endpoint_left_failed_is_created_again_and_one_being_changed_is_retried_later(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    from app.backends.base import TransientBackendError

    backend = fe.slots_backend(fake_azure, tmp_path)
    fake_azure.put_resource(fe.endpoint_id(ENDPOINT), {
        "location": "westeurope",
        "properties": {"authMode": "Key", "provisioningState": "Updating"}})
    with pytest.raises(TransientBackendError, match=f"endpoint {ENDPOINT} is Updating"):
        _created(backend, fake_azure, _ref())
    assert fake_azure.calls("PUT") == []
    stored = fake_azure.get(fe.endpoint_id(ENDPOINT)) or {}
    stored["properties"]["provisioningState"] = "Failed"
    fake_azure.put_resource(fe.endpoint_id(ENDPOINT), stored)
    _created(backend, fake_azure, _ref())
    [endpoint] = fake_azure.calls("PUT", f"/onlineEndpoints/{ENDPOINT}$")
    assert endpoint.body["properties"]["authMode"] == "Key"
    assert fake_azure.calls("PUT", "/deployments/blue$")


def test_create_slot_without_a_scoring_image_names_the_setting(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path, scoring_image="")
    with pytest.raises(BackendError, match="azure.scoring_image"):
        _created(backend, fake_azure, _ref())
    assert fake_azure.calls("PUT") == []  # checked before anything is created


# --------------------------------------------------------------------------- readiness


def test_wait_ready_polls_the_deployment_between_checkpoints_until_succeeded(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _created(backend, fake_azure, _ref(), replicas=2)
    checkpoints: list[int] = []

    def checkpoint() -> None:
        checkpoints.append(1)
        if len(checkpoints) == 3:  # Kubernetes got the replicas ready meanwhile
            fe.mark_ready(fake_azure, ENDPOINT, "blue")

    info = backend.wait_ready(_ref(), 2, 30, checkpoint)
    assert len(checkpoints) == 3
    assert (info.replicas, info.replicas_ready) == (2, 2) and "Succeeded" in info.detail
    reads = fake_azure.calls("GET", f"/onlineEndpoints/{ENDPOINT}/deployments/blue$")
    assert len(reads) >= 3 and {r.api_version for r in reads} == {DEPLOYMENTS_API}


def test_a_failed_deployment_ends_the_wait_with_its_own_error_and_log_lines(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _created(backend, fake_azure, _ref())
    fe.mark_failed(fake_azure, ENDPOINT, "blue", "ResourceNotReady",
                   "User container has crashed or terminated.",
                   logs="booting\nloading model from AZUREML_MODEL_DIR\n"
                        "ValueError: signature.json missing")
    with pytest.raises(SlotNotReady) as caught:
        backend.wait_ready(_ref(), 1, 600, lambda: None)
    message = str(caught.value)
    assert "failed: provisioning state Failed" in message
    assert "ResourceNotReady: User container has crashed or terminated." in message
    assert "ValueError: signature.json missing" in message
    [logs] = fake_azure.calls("POST", "/deployments/blue/getLogs$")
    assert logs.body["tail"] > 0


def test_a_deployment_not_ready_in_time_is_slot_not_ready_saying_what_was_seen(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _created(backend, fake_azure, _ref())
    with pytest.raises(SlotNotReady, match="not ready within 0 s: provisioning state Creating"):
        backend.wait_ready(_ref(), 1, 0.3, lambda: None)


# --------------------------------------------------------------------------- switch


def test_switch_traffic_puts_the_endpoint_with_only_the_slot_at_100_percent(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref("slotblu1"))
    green = _ref("slotgrn1", "green", "4")
    _ready(backend, fake_azure, green)
    before = len(fake_azure.requests)
    info = backend.switch_traffic("staging", green)
    puts = [r for r in fake_azure.requests[before:] if r.method == "PUT"]
    assert [r.path.rsplit("/", 1)[-1] for r in puts] == [ENDPOINT]  # keys and URL unchanged
    assert puts[0].api_version == SDK_ENDPOINTS_API
    assert puts[0].body["properties"]["traffic"] == {"green": 100}  # blue's 0% dropped
    assert puts[0].body["properties"]["authMode"] == "Key"
    assert info.ref == green and info.base_url.endswith(f"/api/v1/endpoint/{ENDPOINT}")
    # the endpoint now routes to green
    assert (fake_azure.get(fe.endpoint_id(ENDPOINT)) or {})["properties"]["traffic"] == \
        {"green": 100}
    # again: nothing to change
    before = len(fake_azure.requests)
    assert backend.switch_traffic("staging", green) == info
    assert [r for r in fake_azure.requests[before:] if r.method in ("PUT", "PATCH")] == []


def test_the_first_switch_points_api_management_at_the_endpoint_url_and_primary_key(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    info = _serving(backend, fake_azure, _ref())
    keys = fe.endpoint_keys(fake_azure, ENDPOINT)
    [url] = fake_azure.calls("PUT", "/service/modelgate-apim-test/namedValues/staging-backend-url$")
    [key] = fake_azure.calls("PUT", "/service/modelgate-apim-test/namedValues/staging-backend-key$")
    assert url.body["properties"] == {"displayName": "staging-backend-url", "secret": False,
                                      "value": info.base_url}
    assert key.body["properties"]["secret"] is True
    assert key.body["properties"]["value"] == keys["primaryKey"]
    assert fake_azure.requests.index(url) < fake_azure.requests.index(key)


def test_switching_to_a_slot_that_is_not_deployed_is_resource_not_found(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _ready(backend, fake_azure, _ref("slotblu1"))
    with pytest.raises(ResourceNotFound, match="slot slotxxxx is not deployed"):
        backend.switch_traffic("staging", _ref("slotxxxx"))  # blue runs another slot
    assert fake_azure.calls("PUT", f"/onlineEndpoints/{ENDPOINT}$")[-1].body[
        "properties"]["traffic"] == {}


# --------------------------------------------------------------------------- retire


def test_retire_deletes_only_the_slots_own_deployment(fake_azure: FakeAzure,
                                                     tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref("slotblu1"))
    _ready(backend, fake_azure, _ref("slotgrn1", "green", "4"))
    backend.retire_slot(_ref("slotgrn9", "green"))  # green runs another slot: left alone
    backend.retire_slot(_ref("slotred1", "green", "9"))
    assert fake_azure.calls("DELETE") == []
    backend.retire_slot(_ref("slotgrn1", "green", "4"))
    [delete] = fake_azure.calls("DELETE", f"/onlineEndpoints/{ENDPOINT}/deployments/green$")
    assert delete.api_version == DEPLOYMENTS_API
    assert fake_azure.get(fe.deployment_id(ENDPOINT, "green")) is None
    backend.retire_slot(_ref("slotgrn1", "green", "4"))  # twice: nothing to do
    assert len(fake_azure.calls("DELETE")) == 1
    assert fake_azure.get(fe.deployment_id(ENDPOINT, "blue")) is not None


def test_retiring_the_serving_slot_takes_its_traffic_away_first(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref())
    backend.retire_slot(_ref())
    last_put = fake_azure.calls("PUT", f"/onlineEndpoints/{ENDPOINT}$")[-1]
    assert last_put.body["properties"]["traffic"] == {}
    assert fake_azure.requests.index(last_put) < _index(fake_azure, "DELETE", "/deployments/")
    assert fake_azure.get(fe.deployment_id(ENDPOINT, "blue")) is None


# --------------------------------------------------------------------------- panel reads


def test_the_panels_reads_and_key_reveal_use_arm_without_importing_azure_ai_ml(
        tmp_path: Path) -> None:
    """The panel process never imports azure.ai.ml: run its reads in a fresh interpreter."""
    script = f"""
import json, sys
sys.modules["azure.ai.ml"] = None  # any import of it now fails
from tests.azure.fake_azure import FakeAzure
from tests.azure import fakes_endpoints as fe
fake = FakeAzure().install_areas()
backend = fe.slots_backend(fake, {str(tmp_path)!r})
ws = fe.workspace_id()
fake.put_resource(fe.endpoint_id("{ENDPOINT}"), {{"location": "westeurope", "properties": {{
    "authMode": "Key", "scoringUri": "http://10.0.0.9/api/v1/endpoint/{ENDPOINT}/score",
    "traffic": {{"blue": 100}}}}}})
for colour, slot, state in (("blue", "slotblu1", "Succeeded"), ("green", "slotgrn1", "Creating")):
    fake.put_resource(fe.deployment_id("{ENDPOINT}", colour), {{
        "tags": {{"modelgate-deployment": slot}}, "sku": {{"name": "Default", "capacity": 2}},
        "properties": {{"provisioningState": state, "scaleSettings": {{"minInstances": 2}}}}}})
fe.state(fake).keys[fe.endpoint_id("{ENDPOINT}").lower()] = {{"primaryKey": "p" * 43,
                                                               "secondaryKey": "s" * 43}}
from app.backends.base import SlotRef
keys = backend.slot_keys(SlotRef("slotblu1", "staging", "staging", "blue", "m", "3"))
report = backend.slots_report()
info = backend.slot_info(SlotRef("slotblu1", "staging", "staging", "blue", "m", "3"))
gone = backend.slot_info(SlotRef("slotxxx1", "prod", "prod", "blue", "m", "3"))
print(json.dumps({{"reporting": report.reporting,
                  "slots": {{k: [v.ready, v.restarts] for k, v in report.slots.items()}},
                  "info": [info.scoring_uri, info.replicas, info.replicas_ready],
                  "gone": [gone.replicas_ready, gone.detail],
                  "keys": [keys.primary[:1], keys.secondary[:1]],
                  "versions": sorted({{r.api_version for r in fake.requests}})}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["reporting"] is True
    assert seen["slots"] == {"slotblu1": [2, 0], "slotgrn1": [0, 0]}
    assert seen["info"] == [f"http://10.0.0.9/api/v1/endpoint/{ENDPOINT}/score", 2, 2]
    assert seen["gone"][0] == 0 and "does not exist" in seen["gone"][1]
    assert seen["keys"] == ["p", "s"]  # an admin's reveal, on the panel
    assert seen["versions"] == [DEPLOYMENTS_API]


def test_slots_report_does_not_report_when_azure_cannot_be_read(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    fake_azure.fail("GET", "/onlineEndpoints/[^/]+/deployments$", 403, "AuthorizationFailed",
                    "The client does not have authorization to perform action.", times=5)
    assert backend.slots_report().reporting is False


# --------------------------------------------------------------------------- smoke test


def test_smoke_test_goes_through_api_management_with_the_ci_token_and_the_slot_header(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    credential = FakeCredential()
    backend = fe.slots_backend(fake_azure, tmp_path, credential=credential)
    _serving(backend, fake_azure, _ref("slotblu1"))
    fe.publish_api(fake_azure, fe.APIM, "credit-risk-staging", "staging/credit-risk", "staging")
    green = _ref("slotgrn1", "green", "4")
    _ready(backend, fake_azure, green)
    before = len(fake_azure.requests)
    result = backend.smoke_test(green, fe.endpoint_keys(fake_azure, ENDPOINT)["primaryKey"])

    assert result.model_version == "4" and result.label == "bad"
    assert set(result.probabilities) == {"bad", "good"}
    sent = [r for r in fake_azure.requests[before:] if r.method == "POST"
            and "management.azure.com" not in r.url]
    gateway = f"https://{fe.APIM}.azure-api.net/staging/credit-risk/score"
    scoring_uri = f"http://{fe.SCORING_HOST}/api/v1/endpoint/{ENDPOINT}/score"
    assert [r.url for r in sent] == [gateway, gateway, scoring_uri]  # the last one: APIM's
    anonymous, with_token, forwarded = sent
    assert "authorization" not in anonymous.headers
    assert with_token.headers["authorization"] == "Bearer fake-arm-token"
    assert with_token.headers["azureml-model-deployment"] == "green"
    assert forwarded.headers["azureml-model-deployment"] == "green"  # green takes 0% traffic
    assert anonymous.body == with_token.body == {"data": [{"Age": 30, "Sex": "male",
                                                           "Credit amount": 1000}]}
    assert (f"api://{fe.API_APP_ID}/.default",) in credential.scopes
    assert fe.state(fake_azure).scored[-1] == {"endpoint": ENDPOINT, "deployment": "green",
                                               "version": "4"}


def test_smoke_test_refuses_a_key_the_endpoint_does_not_accept(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _ready(backend, fake_azure, _ref())
    with pytest.raises(SmokeTestFailed, match="the key given is not one"):
        backend.smoke_test(_ref(), "not-the-key")


def test_smoke_test_fails_when_the_slot_serves_another_version(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path, smoke_test_via="direct")
    _ready(backend, fake_azure, _ref())
    fe.register_model(fake_azure, MODEL, "3", signature={  # the signature says version 9
        "name": MODEL, "version": "9", "classes": ["bad", "good"], "example": {"Age": 30}})
    with pytest.raises(SmokeTestFailed, match="serves version 3, expected 9"):
        backend.smoke_test(_ref(), fe.endpoint_keys(fake_azure, ENDPOINT)["primaryKey"])


def test_smoke_test_direct_scores_the_scoring_uri_with_the_key_and_requires_401_without(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path, smoke_test_via="direct")
    info = _ready(backend, fake_azure, _ref())
    key = fe.endpoint_keys(fake_azure, ENDPOINT)["secondaryKey"]
    before = len(fake_azure.requests)
    assert backend.smoke_test(_ref(), key).model_version == "3"
    sent = [r for r in fake_azure.requests[before:] if r.url == info.scoring_uri]
    assert [("authorization" in r.headers) for r in sent] == [False, True]
    assert sent[1].headers["authorization"] == f"Bearer {key}"
    assert {r.headers["azureml-model-deployment"] for r in sent} == {"blue"}
    assert not any("azure-api.net" in r.url for r in fake_azure.requests)


def test_before_the_first_publish_the_smoke_test_scores_at_the_scoring_uri(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)  # apim, but no API published yet
    info = _ready(backend, fake_azure, _ref())
    before = len(fake_azure.requests)
    backend.smoke_test(_ref(), fe.endpoint_keys(fake_azure, ENDPOINT)["primaryKey"])
    urls = [r.url for r in fake_azure.requests[before:] if r.method == "POST"
            and "management.azure.com" not in r.url]
    gateway = f"https://{fe.APIM}.azure-api.net/staging/credit-risk/score"
    assert urls == [gateway, info.scoring_uri, info.scoring_uri]
