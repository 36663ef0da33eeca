"""``modelgate plan`` on Azure: every resource provision, deploy and publish need, each with
create / update (the changed properties) / no change.

Online, each resource is read with one ARM GET (404: to be created) and compared with what
provisioning would send (desired.py), so the plan names exactly what a provision changes;
what lives inside a missing parent is to be created without being read (no resource group:
one GET in all). Nothing is written, and ``azure.ai.ml`` is never imported: the panel plans.
Offline, nothing is read, no credential is used and no SDK is imported: every resource is
listed as to be created, with notes for settings that would stop a provision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from app.backends.azure import infra, names
from app.backends.azure.context import AzureContext, azure_errors
from app.backends.azure.infra import API, Desired, lookup
from app.backends.base import BackendError, Plan, PlanAction, PlanItem, ProvisionSpec

CREATE, UPDATE, NO_CHANGE = PlanAction.CREATE, PlanAction.UPDATE, PlanAction.NO_CHANGE

# Each item's kind, as a plan shows it.
KINDS = {
    "rg": "Resource group", "nsg": "Network security group", "vnet": "Virtual network",
    "subnet": "Subnet", "aks": "AKS cluster", "role": "Role assignment",
    "extension": "Cluster extension", "logs": "Log Analytics workspace",
    "insights": "Application Insights", "storage": "Storage account", "vault": "Key vault",
    "workspace": "Azure ML workspace", "compute": "Compute cluster", "dataset": "Data asset",
    "attached": "Attached compute (Kubernetes)", "apim": "API Management service",
    "endpoint": "Online endpoint", "deployment": "Online deployment", "api": "API",
    "operation": "API operation", "policy": "API policy", "named_value": "Named value",
}


def plan(ctx: AzureContext, spec: ProvisionSpec, offline: bool = False) -> Plan:
    """The plan of the spec's configuration (module docstring).

    Raises:
        BackendError: online only: a bad setting (naming its key), or Azure cannot be read.
    """
    ctx = infra.context_for(ctx, spec)
    environments = tuple(spec.environments) or ctx.config.environment_names
    if offline:
        return Plan("azure", True, tuple(_offline(ctx, environments)))
    infra.validate(ctx)
    try:
        return Plan("azure", False, tuple(_Online(ctx).items(environments)))
    except ImportError as exc:
        raise BackendError(f"planning needs the Azure packages ({exc.name}): "
                           f"{infra.INSTALL_HINT}; or plan --offline") from None


# --------------------------------------------------------------------------- offline


# The settings whose problems an offline plan notes on each item.
_SETTINGS_OF = {
    "rg": ("azure.subscription_id", "workspace.region"),
    "aks": ("azure.pod_cidr", "azure.service_cidr", "azure.dns_service_ip"),
    "vault": ("azure.tenant_id",), "workspace": ("workspace.name",),
    "compute": ("azure.compute_name",),
    "apim": ("azure.apim_name", "azure.apim_email", "azure.apim_publisher_name"),
}


def _offline(ctx: AzureContext, environments: tuple[str, ...]) -> Iterator[PlanItem]:
    bad = dict(infra.problems(ctx))
    for kind, name, note in _names(ctx, environments):
        keys = _SETTINGS_OF.get(kind, ())
        if kind == "subnet":
            keys = (f"azure.{name.split()[0]}_subnet_range",)
        notes = [note, *(f"{key}: {bad[key]}" for key in keys if key in bad)]
        yield PlanItem(KINDS[kind], name or "(azure.apim_name not set)", CREATE, (),
                       "; ".join(n for n in notes if n))


def _names(ctx: AzureContext, environments: tuple[str, ...]
           ) -> Iterator[tuple[str, str, str]]:
    """(kind, name, note) of every item, in plan order (both modes list these)."""
    az = ctx.azure
    yield "rg", ctx.resource_group, ""
    yield "nsg", names.apim_nsg_name(ctx), "on the API Management subnet"
    yield "vnet", az.vnet_name, ""
    yield "subnet", f"{names.AKS_SUBNET} ({az.aks_subnet_range})", ""
    yield "subnet", f"{names.APIM_SUBNET} ({az.apim_subnet_range})", ""
    yield "aks", az.aks_cluster, "private API server, Azure CNI overlay"
    yield "role", f"Network Contributor on subnet {names.AKS_SUBNET}", "for the cluster's identity"
    yield "extension", f"{names.EXTENSION_NAME} ({infra.EXTENSION_TYPE})", \
        "inference on an internal load balancer"
    yield "logs", names.log_analytics_name(ctx), ""
    yield "insights", names.insights_name(ctx), ""
    yield "storage", names.storage_account_name(ctx), ""
    yield "vault", names.key_vault_name(ctx), ""
    yield "workspace", ctx.workspace, ""
    yield "compute", az.compute_name, f"{az.compute_vm_size}, 0-{az.compute_max_nodes} nodes"
    yield "dataset", ctx.config.data.dataset, _dataset_note(ctx)
    yield "attached", names.attached_compute_name(ctx), f"AKS cluster {az.aks_cluster}"
    yield "apim", az.apim_name, f"{az.apim_sku}, External VNET mode (takes 30-75 minutes)"
    for env in environments:
        endpoint = names.endpoint_name(ctx, env)
        api = names.api_name(ctx, env)
        yield "endpoint", endpoint, f"{env}, key auth"
        yield "deployment", f"{endpoint}/{names.DEPLOYMENT_SLOTS[0]}", \
            "a deploy's new slot, at 0% traffic"
        yield "api", api, f"path /{names.api_path(ctx, env)}"
        yield "operation", f"{api}/{names.SCORE_OPERATION_ID}", "POST /score"
        yield "policy", f"{api}/{names.POLICY_ID}", "rawxml, as the local gateway runs it"
        yield "named_value", names.key_named_value(env), "secret: the endpoint's key"
        yield "named_value", names.url_named_value(env), "the endpoint's scoring URL"
    yield "named_value", names.ISSUER_NAMED_VALUE, "the token issuer's URL"


def _dataset_note(ctx: AzureContext) -> str:
    from app.backends.azure.data_assets import file_sha256

    path = ctx.config.data.path
    if not path.is_file():
        return f"data.path: dataset file not found: {path}"
    return f"{path.name}, sha256 {file_sha256(path)[:12]}"


# --------------------------------------------------------------------------- online


class _Online:
    """One online plan: reads each resource once, remembers what exists."""

    def __init__(self, ctx: AzureContext) -> None:
        self.ctx = ctx

    def get(self, path: str, api_version: str, what: str, **params: str
            ) -> dict[str, Any] | None:
        with azure_errors(f"planning: reading {what}"):
            return infra.arm_get(self.ctx, path, api_version, **params)

    def item(self, d: Desired, note: str = "", *, parent: bool = True,
             current: dict[str, Any] | None | bool = False) -> tuple[PlanItem, Any]:
        """The item for a desired resource, and Azure's resource (None when missing).
        ``parent`` False: its parent is missing, so it is not read."""
        if not parent:
            return PlanItem(d.kind, d.name, CREATE, (), note), None
        found = self.get(d.resource_id, d.api_version, f"{d.kind} {d.name}") \
            if current is False else current
        if not isinstance(found, dict):
            return PlanItem(d.kind, d.name, CREATE, (), note), None
        changes = d.changes(found)
        return PlanItem(d.kind, d.name, UPDATE if changes else NO_CHANGE, changes, note), found

    def items(self, environments: tuple[str, ...]) -> Iterator[PlanItem]:
        from app.backends.azure import desired

        ctx = self.ctx
        notes = {(k, n): note for k, n, note in _names(ctx, environments)}

        def note_of(kind: str, name: str) -> str:
            return notes.get((kind, name), "")

        rg_item, rg = self.item(desired.resource_group(ctx))
        yield rg_item
        there = rg is not None
        nsg = desired.nsg(ctx)
        yield self.item(nsg, note_of("nsg", nsg.name), parent=there)[0]
        vnet = desired.vnet(ctx)
        vnet_item, vnet_now = self.item(
            dataclasses.replace(vnet, watch=vnet.watch[:1]), parent=there)
        yield vnet_item
        for subnet, prefix in ((names.AKS_SUBNET, ctx.azure.aks_subnet_range),
                               (names.APIM_SUBNET, ctx.azure.apim_subnet_range)):
            at = f"properties.subnets[name={subnet}]"
            shown = dataclasses.replace(vnet, kind=KINDS["subnet"], name=f"{subnet} ({prefix})",
                                        watch=desired.subnet_watch(subnet))
            exists = vnet_now is not None and lookup(vnet_now, at) is not infra.MISSING
            yield self.item(shown, parent=exists, current=vnet_now if exists else False)[0]

        aks = desired.aks(ctx)
        aks_item, aks_now = self.item(aks, note_of("aks", aks.name), parent=there)
        yield aks_item
        principal = lookup(aks_now, "identity.principalId") if aks_now else None
        role = desired.role_assignment(ctx, principal if isinstance(principal, str) else None)
        yield self.item(role, "for the cluster's identity" if principal else
                        "for the cluster's identity, once the cluster exists",
                        parent=bool(principal))[0]
        ext = desired.extension(ctx)
        yield self.item(ext, note_of("extension", ext.name), parent=aks_now is not None)[0]

        ws_now = None
        for d in (desired.log_analytics(ctx), desired.insights(ctx), desired.storage(ctx),
                  desired.key_vault(ctx, infra.tenant_id(ctx)), desired.workspace(ctx)):
            d_item, ws_now = self.item(d, parent=there)
            yield d_item
        in_ws = ws_now is not None
        compute = desired.compute(ctx)
        yield self.item(compute, note_of("compute", compute.name), parent=in_ws)[0]
        yield self._dataset(in_ws)
        attached = desired.attached_compute(ctx)
        yield self.item(attached, note_of("attached", attached.name), parent=in_ws)[0]

        apim = desired.apim(ctx)
        apim_item, apim_now = self.item(apim, note_of("apim", apim.name), parent=there)
        yield apim_item
        for env in environments:
            yield from self._endpoint(env, in_ws)
            yield from self._api(env, apim.resource_id, apim_now is not None)
        yield self._named_value(names.ISSUER_NAMED_VALUE, apim.resource_id,
                                apim_now is not None, "the token issuer's URL")

    def _dataset(self, in_ws: bool) -> PlanItem:
        from app.backends.azure.data_assets import (
            dataset_versions,
            file_sha256,
            matching_version,
            next_version,
        )

        ctx = self.ctx
        kind, name, path = KINDS["dataset"], ctx.config.data.dataset, ctx.config.data.path
        if not path.is_file():
            return PlanItem(kind, name, CREATE, (), f"data.path: dataset file not found: {path}")
        sha = file_sha256(path)
        versions: list[dict[str, Any]] = []
        if in_ws:
            with azure_errors(f"planning: reading data asset {name}"):
                versions = dataset_versions(ctx)
        found = matching_version(versions, sha)
        if found is not None:
            return PlanItem(kind, f"{name}@{found}", NO_CHANGE, (),
                            f"{path.name}, sha256 {sha[:12]} registered")
        return PlanItem(kind, f"{name}@{next_version(versions)}", CREATE, (),
                        f"{path.name}, sha256 {sha[:12]} (uploaded to the default datastore)")

    def _endpoint(self, env: str, in_ws: bool) -> Iterator[PlanItem]:
        from app.backends.azure.desired import attached_compute, workspace_id

        ctx = self.ctx
        name = names.endpoint_name(ctx, env)
        path = f"{workspace_id(ctx)}/onlineEndpoints/{name}"
        wanted = Desired(f"endpoint:{name}", KINDS["endpoint"], name, path, API["endpoint"],
                         {"properties": {"authMode": "Key",
                                         "compute": attached_compute(ctx).resource_id}},
                         (("auth_mode", "properties.authMode"),
                          ("compute", "properties.compute")))
        item, now = self.item(wanted, f"{env}, key auth", parent=in_ws)
        yield item
        slot = names.DEPLOYMENT_SLOTS[0]
        existing: set[str] = set()
        if now is not None:
            traffic = lookup(now, "properties.traffic")
            serving = max(traffic, key=lambda k: traffic[k]) if isinstance(traffic, dict) \
                and traffic else None
            slot = next(s for s in names.DEPLOYMENT_SLOTS if s != serving)
            with azure_errors(f"planning: reading the deployments of {name}"):
                existing = {str(d.get("name", "")).lower() for d in infra.arm_list(
                    ctx, f"{path}/deployments", API["deployment"])}
        shown = f"{name}/{slot}"
        if slot in existing:
            yield PlanItem(KINDS["deployment"], shown, UPDATE, (),
                           "the next deploy replaces this idle slot, at 0% traffic")
        else:
            yield PlanItem(KINDS["deployment"], shown, CREATE, (),
                           "a deploy's new slot, at 0% traffic")

    def _api(self, env: str, apim_id: str, in_apim: bool) -> Iterator[PlanItem]:
        api = names.api_name(self.ctx, env)
        base = f"{apim_id}/apis/{api}"
        wanted = Desired(f"api:{api}", KINDS["api"], api, base, API["apim"],
                         {"properties": {"path": names.api_path(self.ctx, env),
                                         "subscriptionRequired": False}},
                         (("path", "properties.path"),
                          ("subscription_required", "properties.subscriptionRequired")))
        item, now = self.item(wanted, f"path /{names.api_path(self.ctx, env)}", parent=in_apim)
        yield item
        there = now is not None
        op = names.SCORE_OPERATION_ID
        yield self.item(Desired(f"operation:{api}", KINDS["operation"], f"{api}/{op}",
                                f"{base}/operations/{op}", API["apim"],
                                {"properties": {"method": "POST", "urlTemplate": "/score"}},
                                (("method", "properties.method"),
                                 ("url_template", "properties.urlTemplate"))),
                        "POST /score", parent=there)[0]
        policy = Desired(f"policy:{api}", KINDS["policy"], f"{api}/{names.POLICY_ID}",
                         f"{base}/policies/{names.POLICY_ID}", API["apim"], {})
        found = self.get(policy.resource_id, policy.api_version, policy.name,
                         format="rawxml") if there else None
        yield PlanItem(policy.kind, policy.name, CREATE if found is None else NO_CHANGE, (),
                       "rawxml, as the local gateway runs it" if found is None else
                       "a publish compares the policy it renders and records a new revision "
                       "when it differs")
        yield self._named_value(names.key_named_value(env), apim_id, in_apim,
                                "secret: the endpoint's key", secret=True)
        yield self._named_value(names.url_named_value(env), apim_id, in_apim,
                                "the endpoint's scoring URL")

    def _named_value(self, name: str, apim_id: str, in_apim: bool, note: str,
                     secret: bool = False) -> PlanItem:
        body: dict[str, Any] = {"properties": {"secret": True}} if secret else {}
        watch: tuple[tuple[str, str], ...] = (("secret", "properties.secret"),) if secret else ()
        wanted = Desired(f"named-value:{name}", KINDS["named_value"], name,
                         f"{apim_id}/namedValues/{name}", API["apim"], body, watch)
        return self.item(wanted, note, parent=in_apim)[0]
