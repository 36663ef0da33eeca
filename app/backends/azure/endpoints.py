"""Slots and keys on Azure ML: one Kubernetes online endpoint per environment with key auth,
blue/green as two online deployments of it (``blue``, ``green``), the keys the endpoint's.

What each primitive does on Azure:
- ``create_slot``: the endpoint (created if missing, through the SDK's
  ``KubernetesOnlineEndpoint`` on the attached cluster), the scoring environment (the
  scoring image with Azure ML's inference config), then a PUT of the online deployment at 0%
  (creating a deployment never changes the endpoint's traffic). The deployment is tagged with
  the panel's deployment id: a second call finds it and returns the same slot. It does not wait
  for the deployment's long operation (10+ minutes on a cluster): ``wait_ready`` polls the
  deployment's provisioning state between the caller's checkpoints, so cancelling and the
  ready timeout are the services' as on every backend;
- ``switch_traffic``: ``endpoint.traffic = {slot: 100}`` through the SDK (0% entries are
  dropped from the body), then API Management's named values made to present the endpoint:
  its scoring base URL and its primary key. Blue/green changes neither (they are the
  endpoint's), so after the first switch those writes are skipped and the switch is one
  endpoint update;
- keys: ``listKeys`` / ``regenerateKeys`` of the endpoint. The SDK sends the key's current
  value along with ``regenerateKeys``; a key Azure ML did not change fails the rotation
  loudly. The no-401 order is the services': before the primary is regenerated, API
  Management must present the secondary, and ``azure.key_grace_seconds`` pass first so every
  gateway node has picked the change up.

The scoring URI of a private cluster is private (``http://<internal LB>/api/v1/endpoint/…``):
the smoke test goes through API Management with the CI principal's token and the
``azureml-model-deployment`` header naming the slot (``azure.smoke_test_via: apim``), or
directly when the workers run in a VNET peered with the cluster's (``direct``).

Reads the panel makes (``slot_info``, ``slots_report``, ``slot_keys`` for an admin's reveal)
are plain ARM requests through the resource management client: the panel never imports
azure.ai.ml. The deployment PUT is one too (the body azure-ai-ml builds for a
``KubernetesOnlineDeployment``, checked against it in tests/azure/test_azure_endpoints.py):
the SDK's own call would keep a background thread polling, and printing, until the
deployment is up, long after ``create_slot`` has returned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from app.backends.azure import names, serving_image
from app.backends.azure.context import (
    AzureContext,
    LongOperation,
    azure_errors,
    run_long_operation,
)
from app.backends.base import (
    BackendError,
    Checkpoint,
    KeyRole,
    MemoryOperationStore,
    Progress,
    ReplicaCounts,
    ResourceConflict,
    ResourceNotFound,
    SlotInfo,
    SlotKeys,
    SlotNotReady,
    SlotRef,
    SlotSpec,
    SlotsReport,
    SmokeResult,
    SmokeTestFailed,
    TransientBackendError,
)
from app.backends.smoke import judge_answer

logger = logging.getLogger(__name__)

BACKEND = "azure"
#: The api-version azure-ai-ml (1.35) sends for online deployments; every request this module
#: sends itself (reads, the deployment PUT and DELETE, listKeys, getLogs) uses it too.
ML_API_VERSION = "2023-04-01-preview"
#: How often wait_ready reads the deployment when the client keyword arguments do not say.
POLL_SECONDS = 10.0
#: Timeouts of the calls to a slot (connect, read), in seconds.
HTTP_TIMEOUT = (5, 30)
#: A ready timeout shorter than this is likely to stop a healthy deployment (warned about).
SLOW_READY_SECONDS = 1200
#: Lines of the scoring container's log a failed or late slot's error quotes.
LOG_LINES = 5

_SUCCEEDED = "succeeded"
_FAILED = ("failed", "canceled")
# The Azure-AsyncOperation URL of deployments this process started (by ARM id, lower case): a
# failed deployment's own error message is there, not on the resource.
_OPERATIONS: dict[str, str] = {}


# --------------------------------------------------------------------------- names


def _endpoint_id(ctx: AzureContext, environment: str) -> str:
    return ctx.resource_id(f"Microsoft.MachineLearningServices/workspaces/{ctx.workspace}"
                           f"/onlineEndpoints/{names.endpoint_name(ctx, environment)}")


def _deployment_name(slot: SlotRef) -> str:
    try:
        return names.deployment_name(slot.slot)
    except ValueError as exc:
        raise ResourceNotFound(f"slot {slot.id}: {exc}") from None


def _deployment_id(ctx: AzureContext, slot: SlotRef) -> str:
    return f"{_endpoint_id(ctx, slot.environment)}/deployments/{_deployment_name(slot)}"


def _model_id(ctx: AzureContext, name: str, version: str) -> str:
    return ctx.resource_id(f"Microsoft.MachineLearningServices/workspaces/{ctx.workspace}"
                           f"/models/{name}/versions/{version}")


def _where(ctx: AzureContext, slot: SlotRef) -> str:
    """``deployment green of endpoint modelgate-ws-staging`` (for messages)."""
    return (f"deployment {slot.slot} of endpoint "
            f"{names.endpoint_name(ctx, slot.environment)}")


# --------------------------------------------------------------------------- ARM


def _arm(ctx: AzureContext, method: str, path: str, *, body: Any = None,
         missing_ok: bool = False, headers: dict[str, str] | None = None) -> Any:
    """One ARM request through the resource management client's pipeline (credential,
    retries after 429, the tests' transport); the JSON answered, None for a 404 when
    ``missing_ok``.

    Raises:
        azure.core.exceptions.HttpResponseError: (and its mapped subclasses) for the caller's
            ``azure_errors`` to translate.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        map_error,
    )
    from azure.core.rest import HttpRequest
    from azure.mgmt.core.exceptions import ARMErrorFormat

    request = HttpRequest(method, path, params={"api-version": ML_API_VERSION}, json=body)
    response = ctx.client("resources").send_request(request)
    if response.status_code == 404 and missing_ok:
        return None
    if response.status_code >= 400:
        map_error(response.status_code, response,
                  {401: ClientAuthenticationError, 404: ResourceNotFoundError,
                   409: ResourceExistsError})
        raise HttpResponseError(response=response, error_format=ARMErrorFormat)
    if headers is not None:
        headers.update({k.lower(): v for k, v in response.headers.items()})
    return response.json() if response.content else {}


def _props(resource: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((resource or {}).get("properties") or {})


def _tag(resource: Mapping[str, Any] | None) -> str:
    return str(((resource or {}).get("tags") or {}).get(names.DEPLOYMENT_TAG, ""))


def _state(resource: Mapping[str, Any] | None) -> str:
    return str(_props(resource).get("provisioningState") or "unknown")


def _traffic(endpoint: Mapping[str, Any] | None) -> dict[str, int]:
    """The endpoint's traffic, 0% entries dropped, deployment names in lower case."""
    raw = _props(endpoint).get("traffic") or {}
    return {str(k).lower(): int(v) for k, v in raw.items() if int(v or 0)}


def _replicas(deployment: Mapping[str, Any]) -> int:
    scale = _props(deployment).get("scaleSettings") or {}
    sku = deployment.get("sku") or {}
    return int(scale.get("minInstances") or sku.get("capacity") or 1)


def _slot_info(ctx: AzureContext, ref: SlotRef, endpoint: Mapping[str, Any] | None,
               deployment: Mapping[str, Any]) -> SlotInfo:
    """What Azure tells of a slot. ARM reports no per-instance readiness: a deployment is
    Succeeded once Azure ML saw its minimum instances pass the readiness probe, so that many
    are ready then, and none before."""
    replicas = _replicas(deployment)
    state = _state(deployment)
    ready = replicas if state.lower() == _SUCCEEDED else 0
    return SlotInfo(ref, BACKEND, str(_props(endpoint).get("scoringUri") or ""), replicas,
                    ready, f"{_where(ctx, ref)}: {state}")


def _read_slot(ctx: AzureContext, slot: SlotRef
               ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(endpoint, deployment) as Azure holds them; the deployment only when it is this slot's
    (tagged with its id), else None."""
    deployment = _arm(ctx, "GET", _deployment_id(ctx, slot), missing_ok=True)
    if deployment is None or _tag(deployment) != slot.id:
        return None, None
    return _arm(ctx, "GET", _endpoint_id(ctx, slot.environment), missing_ok=True), deployment


def _require_slot(ctx: AzureContext, slot: SlotRef, error: type[BackendError] = ResourceNotFound
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    endpoint, deployment = _read_slot(ctx, slot)
    if endpoint is None or deployment is None:
        raise error(f"slot {slot.id} is not deployed ({_where(ctx, slot)} does not run it)")
    return endpoint, deployment


def _list_keys(ctx: AzureContext, environment: str) -> SlotKeys:
    keys = _arm(ctx, "POST", f"{_endpoint_id(ctx, environment)}/listKeys")
    return SlotKeys(str(keys.get("primaryKey") or ""), str(keys.get("secondaryKey") or ""))


def _quiet(percent: int, step: str) -> None:
    logger.debug("%s", step)


def _poll_seconds(ctx: AzureContext) -> float:
    return max(0.05, float(ctx.client_kwargs.get("polling_interval", POLL_SECONDS)))


# --------------------------------------------------------------------------- slots


def create_slot(ctx: AzureContext, spec: SlotSpec, progress: Progress) -> SlotInfo:
    """The slot's online deployment at 0% traffic on the environment's endpoint (created if
    missing); idempotent by the deployment id tag. Starts the deployment and returns:
    ``wait_ready`` waits for it.

    Raises:
        ResourceNotFound: the model version is not registered in the workspace.
        ResourceConflict: the slot's colour is taken by another slot that takes traffic.
        BackendError: Azure refused (the message says what and why).
    """
    ref = spec.ref
    endpoint_name = names.endpoint_name(ctx, ref.environment)
    deployment_name = _deployment_name(ref)
    deployment_id = _deployment_id(ctx, ref)
    with azure_errors(f"creating the {ref.slot} slot of {ref.environment}"):
        progress(5, f"reading deployment {deployment_name} of endpoint {endpoint_name}")
        existing = _arm(ctx, "GET", deployment_id, missing_ok=True)
        endpoint = _arm(ctx, "GET", _endpoint_id(ctx, ref.environment), missing_ok=True)
        if existing is not None and _tag(existing) == ref.id:
            return _slot_info(ctx, ref, endpoint, existing)
        if existing is not None:
            share = _traffic(endpoint).get(deployment_name, 0)
            if share:
                raise ResourceConflict(f"{_where(ctx, ref)} runs slot {_tag(existing) or '?'} "
                                       f"and takes {share}% of the traffic; switch the "
                                       "traffic away from it first")
            logger.info("replacing %s, left over from slot %s", _where(ctx, ref),
                        _tag(existing) or "?")
        progress(10, f"checking model {ref.model_name} v{ref.model_version}")
        if _arm(ctx, "GET", _model_id(ctx, ref.model_name, ref.model_version),
                missing_ok=True) is None:
            raise ResourceNotFound(f"model {ref.model_name} version {ref.model_version} is "
                                   f"not registered in workspace {ctx.workspace}")
        if not ctx.azure.scoring_image:
            raise BackendError("the azure backend needs the scoring image: set "
                               "azure.scoring_image in the pipeline file (docs/azure.md)")
        if endpoint is None or _state(endpoint).lower() in _FAILED:
            endpoint = _create_endpoint(ctx, endpoint_name, progress)
        elif _state(endpoint).lower() != _SUCCEEDED:
            raise TransientBackendError(f"endpoint {endpoint_name} is {_state(endpoint)} "
                                        "(another operation on it is under way); will retry")
        progress(30, f"pointing API Management at endpoint {endpoint_name}")
        prepare_gateway(ctx, ref.environment, endpoint)
        progress(40, f"registering environment {names.SCORING_ENVIRONMENT}")
        environment_id = _scoring_environment(ctx)
        progress(60, f"creating deployment {deployment_name} of endpoint {endpoint_name} "
                     f"({ref.model_name} v{ref.model_version}) at 0% traffic")
        headers: dict[str, str] = {}
        answered = _arm(ctx, "PUT", deployment_id, headers=headers,
                        body=deployment_body(ctx, spec, environment_id,
                                             str(endpoint.get("location") or ctx.location)))
    operation = headers.get("azure-asyncoperation")
    if operation:
        _OPERATIONS[deployment_id.lower()] = operation
    logger.info("started %s for slot %s (%s v%s)", _where(ctx, ref), ref.id, ref.model_name,
                ref.model_version)
    progress(70, f"deployment {deployment_name} of endpoint {endpoint_name} started")
    return _slot_info(ctx, ref, endpoint, answered)


def _create_endpoint(ctx: AzureContext, name: str, progress: Progress) -> dict[str, Any]:
    """The environment's Kubernetes online endpoint with key auth on the attached cluster."""
    from azure.ai.ml.entities import KubernetesOnlineEndpoint

    ml = ctx.client("ml")
    compute = names.attached_compute_name(ctx)
    entity = KubernetesOnlineEndpoint(
        name=name, compute=compute, auth_mode="key",
        description=f"modelgate: scoring endpoint of workspace {ctx.workspace}",
        tags={"modelgate": "endpoint"})
    operation = LongOperation(f"endpoint:{name}", f"creating endpoint {name} on {compute}",
                              lambda token: ml.online_endpoints.begin_create_or_update(entity))
    progress(15, f"creating endpoint {name} on {compute}")
    run_long_operation(operation, MemoryOperationStore(), progress, 15)
    created: dict[str, Any] = _arm(ctx, "GET", ctx.resource_id(
        f"Microsoft.MachineLearningServices/workspaces/{ctx.workspace}/onlineEndpoints/{name}"))
    return created


def scoring_environment_version(ctx: AzureContext) -> str:
    """The scoring environment's version: a hash of the image and the inference config, so
    a new image or route makes a new version and the same ones reuse it."""
    content = json.dumps({"image": ctx.azure.scoring_image,
                          "inference_config": serving_image.inference_config()}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def _scoring_environment(ctx: AzureContext) -> str:
    """The scoring environment's ARM id, registered first when this version is not (Azure ML
    environment versions are immutable: an existing one is used as it is)."""
    from azure.ai.ml.entities import Environment

    version = scoring_environment_version(ctx)
    environment_id = ctx.resource_id(
        f"Microsoft.MachineLearningServices/workspaces/{ctx.workspace}"
        f"/environments/{names.SCORING_ENVIRONMENT}/versions/{version}")
    if _arm(ctx, "GET", environment_id, missing_ok=True) is None:
        ctx.client("ml").environments.create_or_update(Environment(
            name=names.SCORING_ENVIRONMENT, version=version, image=ctx.azure.scoring_image,
            inference_config=serving_image.inference_config(),
            description="modelgate's scoring service (model from AZUREML_MODEL_DIR, keys "
                        "enforced by the endpoint)"))
    return environment_id


def deployment_body(ctx: AzureContext, spec: SlotSpec, environment_id: str,
                    location: str) -> dict[str, Any]:
    """The online deployment's PUT body, as azure-ai-ml builds it for a
    ``KubernetesOnlineDeployment``: the model version, the scoring environment, requests and
    limits from the slot's resources, autoscaling between the replicas and twice as many at
    70% utilisation, and the request settings."""
    ref = spec.ref
    replicas = max(1, int(spec.replicas))
    resources = {"cpu": _cpu(spec.resources.get("cpu", 0.25)),
                 "memory": f"{int(spec.resources.get('memory_mb', 512))}Mi"}
    return {
        "location": location,
        "tags": {names.DEPLOYMENT_TAG: ref.id,
                 names.MODEL_TAG: f"{ref.model_name}:{ref.model_version}"},
        "sku": {"name": "Default", "capacity": replicas},
        "properties": {
            "endpointComputeType": "Kubernetes",
            "description": f"modelgate slot {ref.id}: {ref.model_name} v{ref.model_version}",
            "model": _model_id(ctx, ref.model_name, ref.model_version),
            "environmentId": environment_id,
            "scaleSettings": {"scaleType": "TargetUtilization", "minInstances": replicas,
                              "maxInstances": 2 * replicas,
                              "targetUtilizationPercentage": 70},
            "requestSettings": {"requestTimeout": "PT5S",
                                "maxConcurrentRequestsPerInstance": 1},
            "containerResourceRequirements": {"containerResourceRequests": dict(resources),
                                              "containerResourceLimits": dict(resources)},
            "appInsightsEnabled": False,
            "environmentVariables": serving_image.deployment_variables(ref.model_version),
            "properties": {},
        },
    }


def _cpu(value: Any) -> str:
    """Kubernetes CPU quantity text (``0.25``, ``1``)."""
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def wait_ready(ctx: AzureContext, slot: SlotRef, replicas: int, timeout: float,
               checkpoint: Checkpoint) -> SlotInfo:
    """Poll the deployment until it is Succeeded with its replicas; ``checkpoint()`` between
    polls (it may raise to cancel). A deployment that failed stops the wait at once.

    Raises:
        SlotNotReady: failed, or not ready within ``timeout`` (its state, the deployment's own
            error message and the last lines of its log).
    """
    deadline = time.monotonic() + timeout
    seen = f"{_where(ctx, slot)} does not exist"
    failed = False
    if timeout < SLOW_READY_SECONDS:
        logger.warning("waiting %g s for %s: Azure ML deployments on a cluster take minutes "
                       "(image pull, model download); set azure.ready_timeout_seconds to "
                       "%d or more for the azure backend", timeout, _where(ctx, slot),
                       SLOW_READY_SECONDS)
    while True:
        checkpoint()
        try:
            with azure_errors(f"reading {_where(ctx, slot)}"):
                endpoint, deployment = _read_slot(ctx, slot)
        except TransientBackendError as exc:  # a blip during a long wait is not a failure
            seen = str(exc)
        else:
            if deployment is not None:
                info = _slot_info(ctx, slot, endpoint, deployment)
                state = _state(deployment)
                if state.lower() == _SUCCEEDED and info.replicas_ready >= replicas:
                    return info
                seen = f"provisioning state {state}"
                if state.lower() in _FAILED:
                    failed = True
                    break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(_poll_seconds(ctx), remaining))
    why = "failed" if failed else f"was not ready within {timeout:.0f} s"
    raise SlotNotReady(f"the new slot ({_where(ctx, slot)}) {why}: {seen}"
                       + _failure_detail(ctx, slot))


def _failure_detail(ctx: AzureContext, slot: SlotRef) -> str:
    """The deployment's own error (its operation's, when this process started it) and the
    last lines of the scoring container's log; whatever cannot be read is left out."""
    parts: list[str] = []
    operation = _OPERATIONS.get(_deployment_id(ctx, slot).lower())
    if operation:
        try:
            with azure_errors("reading the deployment's operation"):
                status = _arm(ctx, "GET", operation)
            error = (status or {}).get("error") or {}
            if error.get("message"):
                parts.append(f"{error.get('code') or 'error'}: {error['message']}")
        except BackendError as exc:
            logger.info("could not read the deployment's operation: %s", exc)
    try:
        with azure_errors("reading the deployment's log"):
            logs = ctx.client("ml").online_deployments.get_logs(
                name=_deployment_name(slot),
                endpoint_name=names.endpoint_name(ctx, slot.environment), lines=LOG_LINES * 4)
        lines = [line.strip()[:200] for line in str(logs or "").splitlines() if line.strip()]
        if lines:
            parts.append("last log lines: " + " | ".join(lines[-LOG_LINES:]))
    except (BackendError, ImportError) as exc:
        logger.info("could not read the deployment's log: %s", exc)
    return "".join(f"; {part}" for part in parts)


def slot_info(ctx: AzureContext, slot: SlotRef) -> SlotInfo:
    """What Azure holds of the slot now (plain ARM reads); a missing slot is not an error."""
    with azure_errors(f"reading {_where(ctx, slot)}"):
        deployment = _arm(ctx, "GET", _deployment_id(ctx, slot), missing_ok=True)
        if deployment is None:
            return SlotInfo(slot, BACKEND, detail=f"{_where(ctx, slot)} does not exist")
        if _tag(deployment) != slot.id:
            return SlotInfo(slot, BACKEND, detail=f"{_where(ctx, slot)} runs slot "
                                                  f"{_tag(deployment) or '?'}, not {slot.id}")
        endpoint = _arm(ctx, "GET", _endpoint_id(ctx, slot.environment), missing_ok=True)
    return _slot_info(ctx, slot, endpoint, deployment)


def slots_report(ctx: AzureContext) -> SlotsReport:
    """Every deployment of the environments' endpoints tagged with a panel deployment id, with
    its ready replicas (plain ARM reads, one per environment); not reporting when Azure cannot
    be read. Azure ML does not report restarts through ARM: they read 0."""
    counts: dict[str, ReplicaCounts] = {}
    try:
        with azure_errors("reading the endpoints' deployments"):
            for environment in ctx.config.environment_names:
                listed = _arm(ctx, "GET", f"{_endpoint_id(ctx, environment)}/deployments",
                              missing_ok=True) or {}
                for deployment in listed.get("value") or []:
                    slot_id = _tag(deployment)
                    if slot_id:
                        ready = _replicas(deployment) if _state(deployment).lower() == \
                            _SUCCEEDED else 0
                        counts[slot_id] = ReplicaCounts(ready, 0)
    except Exception as exc:  # the pages show "unknown" rather than fail
        logger.warning("azure: cannot report the slots: %s", exc)
        return SlotsReport(False)
    return SlotsReport(True, counts)


def switch_traffic(ctx: AzureContext, environment: str, slot: SlotRef) -> SlotInfo:
    """All of the endpoint's traffic to the slot's deployment, then API Management presenting
    the endpoint (its scoring base URL and primary key; both unchanged by blue/green, so
    written only the first time or to repair). Idempotent.

    Raises:
        ResourceNotFound: the slot is not deployed.
    """
    deployment_name = _deployment_name(slot)
    with azure_errors(f"switching the traffic of {environment} to the {slot.slot} slot"):
        endpoint, deployment = _require_slot(ctx, slot)
        if _traffic(endpoint) != {deployment_name: 100}:
            endpoint = _set_traffic(ctx, slot, {deployment_name: 100})
        keys = _list_keys(ctx, environment)
        info = _slot_info(ctx, slot, endpoint, deployment)
        point_gateway(ctx, environment, info.base_url, keys.primary)
    logger.info("%s: all traffic to %s (slot %s)", environment, _where(ctx, slot), slot.id)
    return info


def _set_traffic(ctx: AzureContext, slot: SlotRef, traffic: dict[str, int]
                 ) -> dict[str, Any]:
    """The endpoint's traffic set to ``traffic`` through the SDK (which drops 0% entries
    from the body); the endpoint as Azure holds it afterwards."""
    ml = ctx.client("ml")
    name = names.endpoint_name(ctx, slot.environment)
    entity = ml.online_endpoints.get(name)  # every deployment, at 0% unless it takes some
    entity.traffic = {deployment: traffic.get(deployment, 0) for deployment in
                      {*entity.traffic, *traffic}}
    run_long_operation(LongOperation(f"traffic:{name}", f"setting the traffic of endpoint "
                                     f"{name} to {traffic or 'none'}",
                                     lambda token: ml.online_endpoints.begin_create_or_update(
                                         entity)),
                       MemoryOperationStore(), _quiet, 50)
    updated: dict[str, Any] = _arm(ctx, "GET", _endpoint_id(ctx, slot.environment))
    return updated


def retire_slot(ctx: AzureContext, slot: SlotRef) -> None:
    """Delete the slot's deployment (its keys are the endpoint's and stay); a missing slot, or a
    deployment of that colour now running another slot, is left alone. Azure ML refuses to
    delete a deployment that takes traffic: a slot still serving (the services never retire
    the active one) first loses its share, so the endpoint stops serving through it."""
    deployment_id = _deployment_id(ctx, slot)
    deployment_name = _deployment_name(slot)
    label = f"deleting {_where(ctx, slot)} (slot {slot.id})"
    with azure_errors(label):
        endpoint, deployment = _read_slot(ctx, slot)
        if deployment is None:
            return
        traffic = _traffic(endpoint)
        if traffic.pop(deployment_name, 0):
            logger.warning("%s still takes traffic: stopping it before the delete",
                           _where(ctx, slot))
            _set_traffic(ctx, slot, traffic)
        resources = ctx.client("resources").resources
        run_long_operation(LongOperation(f"retire:{deployment_id}", label, lambda token: (
            resources.begin_delete_by_id(deployment_id, api_version=ML_API_VERSION,
                                         continuation_token=token))),
                           MemoryOperationStore(), _quiet, 50)
    _OPERATIONS.pop(deployment_id.lower(), None)
    logger.info("deleted %s (slot %s)", _where(ctx, slot), slot.id)


# --------------------------------------------------------------------------- keys


def slot_keys(ctx: AzureContext, slot: SlotRef) -> SlotKeys:
    """The endpoint's two keys (every slot of an environment shares them).

    Raises:
        ResourceNotFound: the slot is not deployed.
    """
    with azure_errors(f"reading the keys of {names.endpoint_name(ctx, slot.environment)}"):
        _require_slot(ctx, slot)
        return _list_keys(ctx, slot.environment)


def regenerate_key(ctx: AzureContext, slot: SlotRef, which: KeyRole) -> str:
    """A new value for one of the endpoint's keys; the other keeps working.

    Refuses to regenerate the key API Management presents (its calls would be refused), and
    before the primary waits ``azure.key_grace_seconds`` for API Management's move to the
    secondary to reach every gateway node. Compares the keys before and after: Azure ML is
    sent the current value along (the SDK's request), and a key that did not change fails.

    Raises:
        BackendError: the key did not change, or API Management presents it.
    """
    endpoint_name = names.endpoint_name(ctx, slot.environment)
    other = KeyRole.SECONDARY if which == KeyRole.PRIMARY else KeyRole.PRIMARY
    action = f"regenerating the {which} key of endpoint {endpoint_name}"
    with azure_errors(action):
        _require_slot(ctx, slot)
        before = _list_keys(ctx, slot.environment)
        presented = gateway_key(ctx, slot.environment)
        if presented is not None and _same(presented, getattr(before, which.value)):
            raise BackendError(f"{action}: API Management presents the {which} key; point it "
                               f"at the {other} key first, or its calls would be refused")
        grace = float(ctx.azure.key_grace_seconds)
        if which == KeyRole.PRIMARY and presented is not None and grace > 0:
            logger.info("waiting %g s for API Management's gateways to present the %s key",
                        grace, other)
            time.sleep(grace)
        ml = ctx.client("ml")
        run_long_operation(LongOperation(f"keys:{endpoint_name}:{which}", action, lambda token:
                                         ml.online_endpoints.begin_regenerate_keys(
                                             endpoint_name, key_type=which.value)),
                           MemoryOperationStore(), _quiet, 50)
        after = _list_keys(ctx, slot.environment)
    if _same(getattr(after, which.value), getattr(before, which.value)):
        raise BackendError(
            f"Azure ML did not change the {which} key of endpoint {endpoint_name}: "
            "regenerateKeys succeeded but the endpoint returns the same value (the SDK sends "
            f"the current value along). Nothing else changed; the {other} key still works. "
            "Run the rotation again, or regenerate the key in Azure ML studio")
    if not _same(getattr(after, other.value), getattr(before, other.value)):
        raise BackendError(f"{action}: Azure ML changed the {other} key too; point API "
                           "Management at the current primary (redeploy or rotate again)")
    logger.info("regenerated the %s key of endpoint %s", which, endpoint_name)
    fresh: str = getattr(after, which.value)
    return fresh


def sync_keys(ctx: AzureContext, slot: SlotRef) -> None:
    """Nothing to repair: the keys live in one place, the endpoint."""


def check_key(ctx: AzureContext, slot: SlotRef, secret: str) -> bool:
    """Whether the endpoint accepts ``secret``.

    ``direct``: the example POSTed to the scoring URI with the key (200 → True, 401 →
    False). ``apim``: the scoring URI is private and API Management presents its own key, so
    the key cannot be tried from here; the endpoint accepts exactly the two keys ``listKeys``
    returns, so the secret is compared with those (in constant time).

    Raises:
        SmokeTestFailed: the slot is not deployed, or answered neither 200 nor 401.
    """
    with azure_errors(f"checking a key of {names.endpoint_name(ctx, slot.environment)}"):
        endpoint, _ = _require_slot(ctx, slot, SmokeTestFailed)
        if ctx.azure.smoke_test_via != "direct":
            keys = _list_keys(ctx, slot.environment)
            return _same(secret, keys.primary) | _same(secret, keys.secondary)
        example = _signature(ctx, slot).get("example") or {}
    status, _ = _post(ctx, str(_props(endpoint).get("scoringUri") or ""),
                      _slot_headers(slot, secret), example, "key check")
    if status not in (200, 401):
        raise SmokeTestFailed(f"key check: {_where(ctx, slot)} answered HTTP {status}, "
                              "expected 200 or 401")
    return status == 200


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# --------------------------------------------------------------------------- smoke test


def smoke_test(ctx: AzureContext, slot: SlotRef, key: str) -> SmokeResult:
    """Score the signature's example on the slot, and require that a request without
    credentials is refused (401) and that the slot serves the ref's version.

    ``apim``: through the environment's smoke API in API Management (``<api>-smoke``, which
    ``create_slot`` keeps, so even the first deploy, before anything is published, has one)
    with the CI principal's token for the API (``api://<azure.api_app_id>/.default``, role
    MLOps.Engineer) and ``azureml-model-deployment: <slot>``; the key is checked against the
    endpoint's keys (API Management presents its own). ``direct``: at the scoring URI with
    the key (a cluster's scoring URI is private: only from a VNET peered with the cluster's).

    Raises:
        SmokeTestFailed: with what was wrong (never the key).
    """
    with azure_errors(f"smoke test of {_where(ctx, slot)}"):
        endpoint, _ = _require_slot(ctx, slot, SmokeTestFailed)
        signature = _signature(ctx, slot)
        keys = _list_keys(ctx, slot.environment)
        scoring_uri = str(_props(endpoint).get("scoringUri") or "")
        example = signature.get("example") or {}
        if ctx.azure.smoke_test_via != "direct":
            if not (_same(key, keys.primary) | _same(key, keys.secondary)):
                raise SmokeTestFailed(f"smoke test: the key given is not one {_where(ctx, slot)}"
                                      " accepts")
            answered = _through_gateway(ctx, slot, endpoint, example)
            return _judge(answered, signature, "through API Management")
    anonymous, _ = _post(ctx, scoring_uri, _slot_headers(slot, None), example, "smoke test")
    if anonymous != 401:
        raise SmokeTestFailed(f"smoke test: a request without a key got HTTP {anonymous}, "
                              "expected 401")
    status, body = _post(ctx, scoring_uri, _slot_headers(slot, key), example, "smoke test")
    if status != 200:
        raise SmokeTestFailed(f"smoke test: the example got HTTP {status} from "
                              f"{_where(ctx, slot)}, expected 200")
    return _judge(body, signature, "at the scoring URI")


def gateway_score_url(ctx: AzureContext, environment: str) -> str:
    """The environment's score operation on API Management's gateway."""
    return (f"https://{ctx.azure.apim_name}.azure-api.net/"
            f"{names.api_path(ctx, environment).strip('/')}/score")


def smoke_score_url(ctx: AzureContext, environment: str) -> str:
    """The score operation of the environment's smoke API on API Management's gateway."""
    return (f"https://{ctx.azure.apim_name}.azure-api.net/"
            f"{names.smoke_api_path(ctx, environment)}/score")


def prepare_gateway(ctx: AzureContext, environment: str, endpoint: Mapping[str, Any]) -> None:
    """As soon as the environment's endpoint exists: API Management's named values for it
    (its scoring base URL and primary key, which blue/green never changes, so a published
    API keeps forwarding to the same endpoint) and, for ``smoke_test_via: apim``, the
    environment's smoke API. Idempotent; nothing without ``azure.apim_name``."""
    if not ctx.azure.apim_name:
        return
    base_url = str(_props(endpoint).get("scoringUri") or "").removesuffix("/score")
    if not base_url:
        raise TransientBackendError(f"endpoint {names.endpoint_name(ctx, environment)} has no "
                                    "scoring URI yet; will retry")
    point_gateway(ctx, environment, base_url, _list_keys(ctx, environment).primary)
    if ctx.azure.smoke_test_via != "direct":
        from app.backends.azure import apim

        apim.ensure_smoke_api(ctx, environment)


def _through_gateway(ctx: AzureContext, slot: SlotRef, endpoint: Mapping[str, Any],
                     example: Mapping[str, Any]) -> Any:
    """The answer through the environment's smoke API (401 required without a token first).
    A smoke API missing (404: a slot created before it existed, or removed) is created and
    the test run again."""
    if not ctx.azure.apim_name or not ctx.azure.api_app_id:
        raise SmokeTestFailed("smoke test through API Management needs azure.apim_name and "
                              "azure.api_app_id (or azure.smoke_test_via: direct)")
    url = smoke_score_url(ctx, slot.environment)
    route = {"azureml-model-deployment": _deployment_name(slot)}
    anonymous, _ = _post(ctx, url, route, example, "smoke test")
    if anonymous == 404:
        logger.info("API Management has no smoke API for %s: creating it", slot.environment)
        prepare_gateway(ctx, slot.environment, endpoint)
        anonymous, _ = _post(ctx, url, route, example, "smoke test")
    if anonymous != 401:
        raise SmokeTestFailed(f"smoke test: API Management answered HTTP {anonymous} to a "
                              "request without a token, expected 401")
    token = ctx.credential.get_token(f"api://{ctx.azure.api_app_id}/.default").token
    status, body = _post(ctx, url, {**route, "Authorization": f"Bearer {token}"}, example,
                         "smoke test")
    if status != 200:
        raise SmokeTestFailed(f"smoke test: API Management answered HTTP {status} for "
                              f"{_where(ctx, slot)}, expected 200")
    return body


def _slot_headers(slot: SlotRef, key: str | None) -> dict[str, str]:
    headers = {"azureml-model-deployment": _deployment_name(slot)}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _post(ctx: AzureContext, url: str, headers: Mapping[str, str],
          example: Mapping[str, Any], what: str) -> tuple[int, Any]:
    """POST the example to a slot (or the gateway); (status, JSON body or None).

    Raises:
        SmokeTestFailed: nothing answered (a private scoring URI from outside its VNET).
    """
    from azure.core import PipelineClient
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError
    from azure.core.pipeline.policies import HeadersPolicy, HttpLoggingPolicy, RetryPolicy
    from azure.core.rest import HttpRequest

    if not url:
        raise SmokeTestFailed(f"{what}: the endpoint has no scoring URI yet")
    # HttpLoggingPolicy redacts every header it does not know, Authorization included.
    client: PipelineClient[Any, Any] = PipelineClient(
        url, policies=[HeadersPolicy(), RetryPolicy(retry_total=2), HttpLoggingPolicy()],
        transport=ctx.client_kwargs.get("transport"))
    request = HttpRequest("POST", url, json={"data": [dict(example)]},
                          headers={"Content-Type": "application/json", **headers})
    try:
        response = client.send_request(request, connection_timeout=HTTP_TIMEOUT[0],
                                       read_timeout=HTTP_TIMEOUT[1])
        response.read()
    except (ServiceRequestError, ServiceResponseError) as exc:
        _close(ctx, client)
        raise SmokeTestFailed(
            f"{what}: {url} did not answer ({type(exc).__name__}); a cluster's scoring URI is "
            "private: smoke-test through API Management (azure.smoke_test_via: apim) or run "
            "the workers in a VNET peered with the cluster's") from None
    _close(ctx, client)
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body


def _close(ctx: AzureContext, client: Any) -> None:
    """Close the client's own transport (not one the context shares with the SDK clients)."""
    if "transport" not in ctx.client_kwargs:
        client.close()


def _signature(ctx: AzureContext, slot: SlotRef) -> dict[str, Any]:
    """The signature training registered with the model version (its example and classes)."""
    version = _arm(ctx, "GET", _model_id(ctx, slot.model_name, slot.model_version),
                   missing_ok=True)
    if version is None:
        raise SmokeTestFailed(f"smoke test: model {slot.model_name} version "
                              f"{slot.model_version} is not registered")
    props = _props(version)
    text = (props.get("properties") or {}).get(names.SIGNATURE_PROPERTY) or \
        (version.get("tags") or props.get("tags") or {}).get(names.SIGNATURE_PROPERTY)
    try:
        signature = json.loads(str(text))
        if not isinstance(signature, dict):
            raise ValueError("not an object")
    except (TypeError, ValueError):
        raise SmokeTestFailed(f"smoke test: model {slot.model_name} v{slot.model_version} "
                              f"carries no readable {names.SIGNATURE_PROPERTY} property "
                              "(modelgate's training registers it)") from None
    return signature


def _judge(body: Any, signature: Mapping[str, Any], how: str) -> SmokeResult:
    """The slot's answer checked as every backend checks it (app/backends/smoke.py)."""
    return judge_answer(body, signature, f"smoke test ({how})")


# --------------------------------------------------------------------------- API Management


def gateway_key(ctx: AzureContext, environment: str) -> str | None:
    """The key API Management presents to the environment's endpoint (its secret named
    value), None when it presents none yet (or there is no API Management)."""
    if not ctx.azure.apim_name:
        return None
    from azure.core.exceptions import ResourceNotFoundError

    try:
        secret = ctx.client("apim").named_value.list_value(
            ctx.resource_group, ctx.azure.apim_name, names.key_named_value(environment))
    except ResourceNotFoundError:
        return None
    return str(secret.value) if secret.value is not None else None


def point_gateway(ctx: AzureContext, environment: str, url: str, key: str) -> None:
    """Make API Management present the endpoint: its scoring base URL and the key, through
    API Management's own primitives (apim.py), each written only when it differs. After
    replacing a key it presented, wait ``azure.key_grace_seconds`` for every gateway node to
    pick the new one up (the services may drop the replaced key next)."""
    if not ctx.azure.apim_name:
        logger.warning("no azure.apim_name: no API Management to point at %s", url)
        return
    from app.backends.azure import apim

    apim.set_plain_named_value(ctx, names.url_named_value(environment), url)
    presented = gateway_key(ctx, environment)
    if presented is not None and _same(presented, key):
        return
    apim.gateway_use_key(ctx, environment, key)
    logger.info("API Management: %s holds the endpoint's primary key",
                names.key_named_value(environment))
    grace = float(ctx.azure.key_grace_seconds)
    if presented is not None and grace > 0:
        logger.info("waiting %g s for API Management's gateways to present the endpoint's "
                    "primary key", grace)
        time.sleep(grace)
