"""Provision, tear down, plan and check the Azure side of the chain.

provision creates or updates, in order: the resource group; the network security group API
Management needs; the VNET with its two subnets inline (the API Management subnet carrying the
NSG); API Management (started here, awaited last: it takes 30-75 minutes); the private AKS
cluster (Azure CNI overlay, private API server); Network Contributor for the cluster's identity
on its subnet; the Azure ML extension (inference on an internal load balancer); the Azure ML
workspace with its Log Analytics workspace, Application Insights, storage account and key
vault; the compute cluster; the dataset as a data asset versioned by content hash; the cluster
attached as Kubernetes compute. Every step reads the resource first (a GET): missing is
created, a watched property that differs is updated (the changes are logged), the same is left
alone, so a second run sends no PUT at all and lists everything as existing.

The Azure ML workspace is written as ARM PUTs through the resource-management client (not
``MLClient.workspaces.begin_create``, whose ARM deployment builds its own client and ignores
``transport=``); compute, data assets and the attached cluster go through ``MLClient``; the
dataset's file is uploaded to the workspace's default blob datastore with an azure-storage-blob
client on the same transport, signed with the storage account's key (Azure ML's own upload
does the same with the datastore's secret).

Long operations keep their continuation token in ``spec.operations`` (the job's row): a job
killed or timed out while waiting resumes polling on its next attempt (GETs only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.backends.azure import data_assets, desired, infra, names
from app.backends.azure.context import (
    AzureContext,
    LongOperation,
    azure_errors,
    run_long_operation,
)
from app.backends.azure.infra import API, INSTALL_HINT, Desired, lookup
from app.backends.base import (
    BackendError,
    BackendHealth,
    MemoryOperationStore,
    OperationStore,
    Plan,
    Progress,
    ProvisionResult,
    ProvisionSpec,
    TransientBackendError,
)

logger = logging.getLogger(__name__)

# A provision attempt waits this long for API Management, then retries (resuming the wait):
# it must end before the job's time limit (AZURE_PROVISION_TIME_LIMIT_SECONDS, 2 h).
APIM_WAIT_SECONDS = 80 * 60
AKS_WAIT_SECONDS = 45 * 60
_BUSY_STATES = ("creating", "activating", "updating", "deleting", "accepted", "inprogress")


def _busy(resource: dict[str, Any]) -> bool:
    """Whether an operation is under way on the resource (API Management reports Created
    with a targetProvisioningState while it activates)."""
    state = str(lookup(resource, "properties.provisioningState")).lower()
    target = lookup(resource, "properties.targetProvisioningState")
    return state in _BUSY_STATES or (isinstance(target, str) and bool(target))


@dataclass
class _Run:
    """One provision: its context, where tokens go, progress, and what it found."""

    ctx: AzureContext
    operations: OperationStore
    progress: Progress
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)

    def tally(self, key: str, state: str) -> None:
        {"created": self.created, "existing": self.existing, "updated": self.updated}[
            state].append(key)

    def read(self, d: Desired) -> dict[str, Any] | None:
        with azure_errors(f"reading {d.kind} {d.name}"):
            return infra.arm_get(self.ctx, d.resource_id, d.api_version)

    def wait(self, key: str, label: str, begin: Callable[[str | None], Any], percent: int,
             timeout: float = 3600.0) -> Any:
        """Run (or resume) a long operation; a failed one's token is forgotten, so the next
        attempt starts it again instead of resuming the failure (a wait cut short keeps it)."""
        try:
            return run_long_operation(LongOperation(key, label, begin, timeout),
                                      self.operations, self.progress, percent)
        except TransientBackendError:
            raise
        except BackendError:
            self.operations.put(key, None)
            self.operations.put(f"{key}#state", None)
            raise

    def ensure(self, d: Desired, percent: int, write: Callable[[dict[str, Any], bool], Any]
               ) -> dict[str, Any]:
        """Read the resource; create it, update what differs, or leave it; return Azure's
        resource as JSON. ``write(body, creating)`` sends the create or update.

        An operation an earlier attempt of the job started (its token is stored) is resumed
        by ``write`` (GETs only); one under way without a token (another job's, or a kill
        before the token was stored) is waited for before comparing.
        """
        self.progress(percent, f"{d.kind} {d.name}")
        current = self.read(d)
        if self.operations.get(d.key) is not None:
            state = self.operations.get(f"{d.key}#state") or "created"
            body = d.create_body()  # not sent: the operation resumes from its token
        elif current is None:
            state, body = "created", d.create_body()
        else:
            current = self.settle(d, current, percent)
            changes = d.changes(current) + _failed(current)
            if not changes:
                self.tally(d.key, "existing")
                return current
            self.changes[d.key] = list(changes)
            logger.info("%s %s: updating %s", d.kind, d.name, "; ".join(changes))
            state, body = "updated", d.update_body(current)
        self.operations.put(f"{d.key}#state", state)
        result = write(body, state == "created")
        self.operations.put(f"{d.key}#state", None)
        self.tally(d.key, state)
        return _json(result) or self.read(d) or {}

    def settle(self, d: Desired, current: dict[str, Any], percent: int,
               timeout: float = 3600.0) -> dict[str, Any]:
        """Wait (GETs) while the resource is being created, updated or deleted by an
        operation this job holds no token for."""
        started = time.monotonic()
        interval = float(self.ctx.client_kwargs.get("polling_interval", 30))
        while True:
            state = str(lookup(current, "properties.provisioningState"))
            if not _busy(current):
                return current
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise TransientBackendError(f"{d.kind} {d.name}: still {state} after "
                                            f"{elapsed / 60:.0f} min; the retry waits again")
            self.progress(percent, f"{d.kind} {d.name}: {state} by another operation "
                                   f"({elapsed / 60:.0f} min)")
            time.sleep(interval)
            current = self.read(d) or {}


def _failed(resource: dict[str, Any]) -> tuple[str, ...]:
    """A resource whose last operation failed is sent again, as an update."""
    state = lookup(resource, "properties.provisioningState")
    return (f"provisioning_state: {state!r} -> 'Succeeded'",) \
        if str(state).lower() == "failed" else ()


def _json(result: Any) -> dict[str, Any] | None:
    """An SDK result as its REST JSON (read-only properties included), if it is a model."""
    if result is None:
        return None
    if hasattr(result, "as_dict") and hasattr(result, "keys"):
        return dict(result.as_dict())
    if hasattr(result, "serialize"):
        return dict(result.serialize(keep_readonly=True))
    return dict(result) if isinstance(result, dict) else None


# --------------------------------------------------------------------------- provision


def provision(ctx: AzureContext, spec: ProvisionSpec, progress: Progress) -> ProvisionResult:
    """Create or update every resource (module docstring); report created / existing /
    updated like the local backend.

    Raises:
        BackendError: a bad setting (naming its key, before any call), a taken API Management
            name, quota, a region without the size, a failed resource (its own message).
        TransientBackendError: throttling or Azure not answering; a wait cut short (resumed).
    """
    ctx = infra.context_for(ctx, spec)
    infra.validate(ctx)
    unknown = [e for e in spec.environments if e not in ctx.config.environment_names]
    if unknown:
        raise BackendError(f"environments.{unknown[0]}: not in the pipeline configuration")
    data_path = ctx.config.data.path
    if not data_path.is_file():
        raise BackendError(f"data.path: dataset file not found: {data_path}")
    run = _Run(ctx, spec.operations, progress)
    rg = ctx.resource_group

    resources = ctx.client("resources")
    run.ensure(desired.resource_group(ctx), 2, lambda body, _new: _call(
        "creating the resource group", resources.resource_groups.create_or_update, rg, body))
    network = ctx.client("network")
    nsg = desired.nsg(ctx)
    run.ensure(nsg, 4, lambda body, _new: run.wait(
        nsg.key, f"network security group {nsg.name}",
        lambda token: network.network_security_groups.begin_create_or_update(
            rg, nsg.name, _network_model("NetworkSecurityGroup", body),
            continuation_token=token), 4))
    vnet = desired.vnet(ctx)
    run.ensure(vnet, 6, lambda body, _new: run.wait(
        vnet.key, f"virtual network {vnet.name}",
        lambda token: network.virtual_networks.begin_create_or_update(
            rg, vnet.name, _network_model("VirtualNetwork", body), continuation_token=token), 6))

    apim = _ApimStart.begin(run, 8)  # needs only its subnet; awaited last

    cluster = _ensure_aks(run, 10)
    _ensure_role_assignment(run, cluster, 32)
    _ensure_extension(run, 35)
    _ensure_workspace(run, 40)
    _ensure_compute(run, 55)
    run.progress(60, f"data asset {ctx.config.data.dataset}")
    key, state, dataset = data_assets.ensure(ctx, run.progress, 60)
    run.tally(key, state)
    _ensure_attached_compute(run, 68)
    apim.finish(run, 75)

    progress(100, "provisioned")
    return ProvisionResult(
        workspace=ctx.workspace, created=tuple(run.created), existing=tuple(run.existing),
        details={"updated": list(run.updated), "changes": run.changes,
                 "subscription_id": ctx.subscription_id, "resource_group": rg,
                 "region": ctx.location, "dataset": dataset,
                 "endpoints": {env: names.endpoint_name(ctx, env) for env in spec.environments},
                 "apim": {"name": ctx.azure.apim_name,
                          "gateway_url": str(lookup(apim.result, "properties.gatewayUrl")
                                             or "")}})


def _call(label: str, fn: Callable[..., Any], *args: Any) -> Any:
    with azure_errors(label):
        return fn(*args)


def _network_model(name: str, body: dict[str, Any]) -> Any:
    from azure.mgmt.network import models

    return getattr(models, name)(body)


def _ensure_aks(run: _Run, percent: int) -> dict[str, Any]:
    from azure.mgmt.containerservice.models import ManagedCluster

    ctx = run.ctx
    aks = desired.aks(ctx)
    containers = ctx.client("containers")
    return run.ensure(aks, percent, lambda body, _new: run.wait(
        aks.key, f"AKS cluster {aks.name}",
        lambda token: containers.managed_clusters.begin_create_or_update(
            ctx.resource_group, aks.name, ManagedCluster(body), continuation_token=token),
        percent, AKS_WAIT_SECONDS))


def _ensure_role_assignment(run: _Run, cluster: dict[str, Any], percent: int) -> None:
    """Network Contributor for the cluster's identity on its subnet; an assignment that
    already exists under another name (409 RoleAssignmentExists) is fine."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters

    principal = lookup(cluster, "identity.principalId")
    if not isinstance(principal, str) or not principal:
        raise TransientBackendError(f"AKS cluster {run.ctx.azure.aks_cluster} has no identity "
                                    "yet; will retry")
    d = desired.role_assignment(run.ctx, principal)
    run.progress(percent, f"{d.kind}: {d.name}")
    if run.read(d) is not None:
        run.tally(d.key, "existing")
        return
    scope, name = d.resource_id.split("/providers/Microsoft.Authorization/roleAssignments/")
    authorization = run.ctx.client("authorization")
    with azure_errors(f"assigning {d.name}"):
        try:
            authorization.role_assignments.create(
                scope, name, RoleAssignmentCreateParameters.from_dict(d.body))
        except HttpResponseError as exc:
            code = str(getattr(getattr(exc, "error", None), "code", "") or "")
            if code == "RoleAssignmentExists":  # the same assignment under another name
                run.tally(d.key, "existing")
                return
            if code == "PrincipalNotFound":  # a new identity takes a while to replicate
                raise TransientBackendError(f"assigning {d.name}: the cluster's identity is "
                                            "not visible yet; will retry") from None
            raise
    run.tally(d.key, "created")


def _ensure_extension(run: _Run, percent: int) -> None:
    from azure.mgmt.kubernetesconfiguration.v2023_05_01.models import Extension, PatchExtension

    ctx = run.ctx
    ext = desired.extension(ctx)
    client = ctx.client("extensions").extensions
    where = (ctx.resource_group, "Microsoft.ContainerService", "managedClusters",
             ctx.azure.aks_cluster, names.EXTENSION_NAME)

    def write(body: dict[str, Any], creating: bool) -> Any:
        if creating:
            return run.wait(ext.key, f"cluster extension {names.EXTENSION_NAME}",
                            lambda token: client.begin_create(
                                *where, Extension.from_dict(body), continuation_token=token),
                            percent)
        # An installed extension changes by PATCH (its type and scope are fixed).
        patch = PatchExtension(auto_upgrade_minor_version=True,
                               configuration_settings=desired.extension_settings(ctx))
        return run.wait(ext.key, f"cluster extension {names.EXTENSION_NAME}",
                        lambda token: client.begin_update(*where, patch,
                                                          continuation_token=token), percent)

    run.ensure(ext, percent, write)


def _generic_writer(run: _Run, d: Desired, percent: int
                    ) -> Callable[[dict[str, Any], bool], Any]:
    resources = run.ctx.client("resources").resources

    def write(body: dict[str, Any], _creating: bool) -> Any:
        return run.wait(d.key, f"{d.kind} {d.name}",
                        lambda token: resources.begin_create_or_update_by_id(
                            d.resource_id, body, api_version=d.api_version,
                            continuation_token=token), percent)
    return write


def _ensure_workspace(run: _Run, percent: int) -> None:
    """The Azure ML workspace as ARM PUTs (module docstring), its dependencies first."""
    ctx = run.ctx
    for step, d in enumerate((desired.log_analytics(ctx), desired.insights(ctx),
                              desired.storage(ctx), desired.key_vault(ctx, infra.tenant_id(ctx)),
                              desired.workspace(ctx))):
        run.ensure(d, percent + 3 * step, _generic_writer(run, d, percent + 3 * step))


def _ensure_compute(run: _Run, percent: int) -> None:
    az = run.ctx.azure

    def write(_body: dict[str, Any], creating: bool) -> Any:
        from azure.ai.ml.entities import AmlCompute

        cluster = AmlCompute(name=az.compute_name, size=az.compute_vm_size, min_instances=0,
                             max_instances=az.compute_max_nodes)
        operations = run.ctx.client("ml").compute
        begin = operations.begin_create_or_update if creating else operations.begin_update
        with azure_errors(f"compute cluster {az.compute_name}"):
            begin(cluster).result()

    run.ensure(desired.compute(run.ctx), percent, write)


def _ensure_attached_compute(run: _Run, percent: int) -> None:
    ctx = run.ctx
    d = desired.attached_compute(ctx)

    def write(_body: dict[str, Any], _creating: bool) -> Any:
        from azure.ai.ml.entities import KubernetesCompute

        attached = KubernetesCompute(name=d.name, resource_id=desired.aks_id(ctx),
                                     namespace=names.EXTENSION_NAMESPACE)
        with azure_errors(f"attaching AKS cluster {ctx.azure.aks_cluster}"):
            ctx.client("ml").compute.begin_attach(attached).result()

    run.ensure(d, percent, write)


# --------------------------------------------------------------------------- API Management


@dataclass
class _ApimStart:
    """API Management: checked and started early (it needs only its subnet), awaited last."""

    d: Desired
    state: str  # created | updated | existing | busy
    result: dict[str, Any] = field(default_factory=dict)
    poller: Any = None  # the operation started by this attempt (already polling)

    @classmethod
    def begin(cls, run: _Run, percent: int) -> _ApimStart:
        ctx = run.ctx
        d = desired.apim(ctx)
        run.progress(percent, f"{d.kind} {d.name}")
        marker = run.operations.get(f"{d.key}#state")
        if run.operations.get(d.key) and marker:
            return cls(d, marker)  # started by an earlier attempt: finish() resumes it
        current = run.read(d)
        if current is None:
            _check_name(ctx, d.name)
            return cls._start(run, d, d.create_body(), "created", percent)
        if _busy(current):
            return cls(d, "busy", current)
        changes = d.changes(current) + _failed(current)
        if not changes:
            return cls(d, "existing", current)
        run.changes[d.key] = list(changes)
        return cls._start(run, d, d.update_body(current), "updated", percent)

    @classmethod
    def _start(cls, run: _Run, d: Desired, body: dict[str, Any], state: str,
               percent: int) -> _ApimStart:
        run.progress(percent, f"{d.kind} {d.name}: starting (takes 30-75 minutes)")
        with azure_errors(f"creating {d.kind} {d.name}"):
            poller = _apim_begin(run.ctx, d, body, None)
        run.operations.put(f"{d.key}#state", state)
        run.operations.put(d.key, poller.continuation_token())
        return cls(d, state, poller=poller)

    def finish(self, run: _Run, percent: int) -> None:
        """Wait for the operation (resuming from its token) or a creation under way."""
        d = self.d
        if self.state == "busy":
            self.result = run.settle(d, self.result, percent, APIM_WAIT_SECONDS)
            self.state = "existing"
        elif self.state in ("created", "updated"):
            # This attempt's own poller if it started the operation, else one resumed from
            # the token an earlier attempt stored.
            result = run.wait(d.key, f"{d.kind} {d.name}",
                              lambda token: self.poller or _apim_begin(run.ctx, d,
                                                                       d.create_body(), token),
                              percent, APIM_WAIT_SECONDS)
            self.result = _json(result) or {}
            run.operations.put(f"{d.key}#state", None)
        run.tally(d.key, self.state)


def _apim_begin(ctx: AzureContext, d: Desired, body: dict[str, Any], token: str | None) -> Any:
    from azure.mgmt.apimanagement.models import ApiManagementServiceResource

    return ctx.client("apim").api_management_service.begin_create_or_update(
        ctx.resource_group, d.name, ApiManagementServiceResource.from_dict(body),
        continuation_token=token)


def _check_name(ctx: AzureContext, name: str) -> None:
    """API Management names are global: refuse a taken or soft-deleted one before creating."""
    from azure.mgmt.apimanagement.models import (
        ApiManagementServiceCheckNameAvailabilityParameters,
    )

    client = ctx.client("apim")
    with azure_errors(f"checking the API Management name {name}"):
        answer = client.api_management_service.check_name_availability(
            ApiManagementServiceCheckNameAvailabilityParameters(name=name))
        if answer.name_available:
            return
        deleted = next((s for s in client.deleted_services.list_by_subscription()
                        if str(s.name).lower() == name.lower()), None)
    if deleted is not None:
        where = deleted.location or ctx.location
        raise BackendError(
            f"azure.apim_name: {name!r} belongs to a soft-deleted API Management service "
            f"(in {where}); purge it with `az apim deletedservice purge --service-name {name} "
            f"--location {where}` (docs/azure.md, 'Teardown') or choose another name")
    raise BackendError(f"azure.apim_name: {name!r} is taken (API Management names are global): "
                       f"choose another ({answer.message or answer.reason})")


# --------------------------------------------------------------------------- teardown


def teardown(ctx: AzureContext, workspace: str, progress: Progress) -> None:
    """Delete the resource group (everything in it), then purge the soft-deleted API
    Management service and key vault, whose names stay taken until purged. What is missing
    is not an error."""
    if workspace != ctx.workspace:
        progress(100, f"workspace {workspace} is not this configuration's ({ctx.workspace}); "
                      "nothing removed")
        return
    rg = ctx.resource_group
    resources = ctx.client("resources")
    progress(5, f"resource group {rg}")
    with azure_errors(f"reading resource group {rg}"):
        exists = infra.arm_get(ctx, desired.resource_group(ctx).resource_id,
                               API["resource_group"]) is not None
    if exists:
        run_long_operation(LongOperation(
            f"delete:resource-group:{rg}", f"deleting resource group {rg}",
            lambda token: resources.resource_groups.begin_delete(rg, continuation_token=token),
            timeout=3 * 3600), MemoryOperationStore(), progress, 10)
        progress(70, f"resource group {rg} deleted")
    else:
        progress(70, f"resource group {rg} not found; nothing to delete")
    _purge_apim(ctx, progress, 80)
    _purge_key_vault(ctx, progress, 90)
    progress(100, "torn down")


def _purge_apim(ctx: AzureContext, progress: Progress, percent: int) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    name = ctx.azure.apim_name
    if not name:
        return
    client = ctx.client("apim").deleted_services
    progress(percent, f"API Management service {name}: purging the soft-deleted service")
    with azure_errors(f"reading the soft-deleted API Management service {name}"):
        try:
            client.get_by_name(name, ctx.location)
        except ResourceNotFoundError:
            progress(percent, f"API Management service {name}: nothing to purge")
            return
    run_long_operation(LongOperation(
        f"purge:apim:{name}", f"purging API Management service {name}",
        lambda token: client.begin_purge(name, ctx.location, continuation_token=token)),
        MemoryOperationStore(), progress, percent)


def _purge_key_vault(ctx: AzureContext, progress: Progress, percent: int) -> None:
    name = names.key_vault_name(ctx)
    path = (f"/subscriptions/{ctx.subscription_id}/providers/Microsoft.KeyVault/locations/"
            f"{ctx.location}/deletedVaults/{name}")
    with azure_errors(f"reading the soft-deleted key vault {name}"):
        if infra.arm_get(ctx, path, API["key_vault"]) is None:
            return
        progress(percent, f"key vault {name}: purging the soft-deleted vault")
        infra.arm_post(ctx, f"{path}/purge", API["key_vault"])


# --------------------------------------------------------------------------- plan and health


def plan(ctx: AzureContext, spec: ProvisionSpec, offline: bool = False) -> Plan:
    """Every Azure resource the chain needs with what provision, deploy and publish would do
    (planning.py)."""
    from app.backends.azure.planning import plan as planned

    return planned(ctx, spec, offline)


def health(ctx: AzureContext) -> BackendHealth:
    """Whether Azure answers with this credential: one GET of the resource group."""
    rg = ctx.resource_group
    try:
        with azure_errors(f"reading resource group {rg}"):
            found = infra.arm_get(ctx, f"/subscriptions/{ctx.subscription_id}/resourceGroups/"
                                       f"{rg}", API["resource_group"])
    except BackendError as exc:
        return BackendHealth("azure", False, str(exc))
    except ImportError:
        return BackendHealth("azure", False, f"the Azure packages are missing: {INSTALL_HINT}")
    except Exception as exc:  # never raise from health: say what kind of trouble it was
        return BackendHealth("azure", False, f"Azure unreachable ({type(exc).__name__})")
    if found is None:
        return BackendHealth("azure", True, f"Azure answers; resource group {rg} is not "
                                            "provisioned yet")
    return BackendHealth("azure", True, f"resource group {rg} in {found.get('location', '?')}")
