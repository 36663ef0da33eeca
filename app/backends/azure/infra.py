"""What the chain needs on Azure, resource by resource: the settings it takes, the desired
state of each resource, how to read Azure's, and how the two differ.

provisioning.py writes what differs and plan (planning.py) reports it, from the same
:class:`Desired` values, so a plan names exactly what a provision would change.

Bodies are in the REST wire format (``{"location": …, "properties": {…}}``), built with the
SDKs' own models where an SDK writes the resource. Reads are plain ARM GETs through the
resource-management client's pipeline (credential, retries with Retry-After, the transport),
with the api-version of the SDK that writes the resource: they never touch ``azure.ai.ml``, so
the panel can plan. A comparison looks only at the watched properties: Azure adds many of its
own (provisioning states, defaults), which are not differences.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.backends.azure.context import AzureContext
from app.backends.base import BackendError, ProvisionSpec
from app.pipeline_config import PipelineConfigError, parse_pipeline_config

# api-versions: the writing SDK's (azure-mgmt-*, azure-ai-ml) or, for resources written through
# the generic client, the stable version whose request examples azure-rest-api-specs documents.
API = {
    "resource_group": "2025-04-01",  # azure-mgmt-resource 26
    "network": "2026-03-01",  # azure-mgmt-network 33
    "aks": "2026-08-01",  # azure-mgmt-containerservice 41
    "role": "2022-04-01",  # azure-mgmt-authorization 4
    "extension": "2023-05-01",  # azure-mgmt-kubernetesconfiguration 3
    "apim": "2024-05-01",  # azure-mgmt-apimanagement 5
    "log_analytics": "2022-10-01",
    "insights": "2020-02-02",
    "storage": "2023-05-01",
    "key_vault": "2023-07-01",
    "workspace": "2024-04-01",
    "compute": "2023-08-01-preview",  # azure-ai-ml's compute operations
    "data": "2023-04-01-preview",  # azure-ai-ml's data operations
    "datastore": "2024-10-01-preview",  # azure-ai-ml's datastore operations
    "endpoint": "2022-02-01-preview",  # azure-ai-ml's online endpoint operations
    "deployment": "2023-04-01-preview",  # azure-ai-ml's online deployment operations
}

INSTALL_HINT = "pip install 'modelgate[azure]'"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"  # built-in role definition id
EXTENSION_TYPE = "Microsoft.AzureML.Kubernetes"
# Address ranges AKS refuses for pods and services.
_AKS_RESERVED = tuple(ipaddress.ip_network(n) for n in
                      ("169.254.0.0/16", "172.30.0.0/16", "172.31.0.0/16", "192.0.2.0/24"))
_APIM_NAME = re.compile(r"^[a-zA-Z](?:[a-zA-Z0-9-]{0,48}[a-zA-Z0-9])?$")
_COMPUTE_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,15}$")
_WORKSPACE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MISSING: Any = object()


# --------------------------------------------------------------------------- settings


def context_for(ctx: AzureContext, spec: ProvisionSpec) -> AzureContext:
    """The context for a spec's settings (``PipelineConfig.to_dict()``): the backend's own
    when they are its configuration, else one on them (same credential and client options,
    clients of its own: the Azure ML client is bound to one workspace).

    A key of the ``azure`` section the spec leaves empty keeps the backend's value (its
    pipeline file's, or for the subscription and tenant the environment's): settings written
    for another backend carry an empty azure section.
    """
    if not spec.settings:
        return ctx
    settings = dict(spec.settings)
    azure = dict(settings.get("azure") or {})
    for key, value in vars(ctx.config.azure).items():
        if azure.get(key) in ("", None):
            azure[key] = value
    settings["azure"] = azure
    try:
        config = parse_pipeline_config(settings)
    except PipelineConfigError as exc:
        raise BackendError(f"invalid pipeline configuration: {exc}") from None
    if config.to_dict() == ctx.config.to_dict():
        return ctx
    return dataclasses.replace(
        ctx, config=config, subscription_id=config.azure.subscription_id or ctx.subscription_id,
        tenant_id=config.azure.tenant_id or ctx.tenant_id, _clients={})


def tenant_id(ctx: AzureContext) -> str:
    """The Entra tenant (the key vault needs it): ``azure.tenant_id`` or AZURE_TENANT_ID."""
    return ctx.azure.tenant_id or ctx.tenant_id or os.environ.get("AZURE_TENANT_ID", "")


def problems(ctx: AzureContext) -> list[tuple[str, str]]:
    """What in the settings would make provisioning fail, as (dotted key, message), checked
    without any call to Azure. (The pipeline file's own checks ran when it was read: CIDRs,
    subnets inside the VNET and apart, pod and service ranges outside it.)"""
    az = ctx.azure
    found: list[tuple[str, str]] = []
    if not ctx.subscription_id:
        found.append(("azure.subscription_id", "must be set (or AZURE_SUBSCRIPTION_ID)"))
    else:
        try:
            uuid.UUID(ctx.subscription_id)
        except ValueError:
            found.append(("azure.subscription_id", "must be a subscription id (a GUID)"))
    if not tenant_id(ctx):
        found.append(("azure.tenant_id", "must be set (or AZURE_TENANT_ID): the key vault and "
                                         "the token issuer belong to the tenant"))
    if not ctx.location:
        found.append(("workspace.region", "must be an Azure region such as westeurope"))
    if not _WORKSPACE_NAME.match(ctx.workspace):
        found.append(("workspace.name", "an Azure ML workspace name is 3-33 letters, digits, "
                                        "'_' or '-', starting with a letter or digit"))
    if not az.apim_name:
        found.append(("azure.apim_name", "must be set: API Management names are global, "
                                         "choose one nobody uses (e.g. <company>-modelgate)"))
    elif not _APIM_NAME.match(az.apim_name):
        found.append(("azure.apim_name", "must be 1-50 letters, digits and '-', starting with "
                                         "a letter and ending with a letter or digit"))
    if not az.apim_email:
        found.append(("azure.apim_email", "must be set: API Management mails its publisher"))
    elif not _EMAIL.match(az.apim_email):
        found.append(("azure.apim_email", "must be an e-mail address"))
    if not az.apim_publisher_name:
        found.append(("azure.apim_publisher_name", "must be set"))
    if not _COMPUTE_NAME.match(az.compute_name):
        found.append(("azure.compute_name", "an Azure ML compute name is 2-16 letters, digits "
                                            "and '-', starting with a letter"))
    found.extend(_network_problems(ctx))
    return found


def _network_problems(ctx: AzureContext) -> list[tuple[str, str]]:
    az = ctx.azure
    found: list[tuple[str, str]] = []
    aks = ipaddress.ip_network(az.aks_subnet_range)
    # Azure keeps 5 addresses of every subnet; nodes, one surge node and the internal load
    # balancer's address need the rest (pods take overlay addresses, not the subnet's).
    if aks.num_addresses - 5 < az.aks_node_count + 2:
        found.append(("azure.aks_subnet_range", f"too small for {az.aks_node_count} nodes, an "
                                                "upgrade's surge node and the internal load "
                                                "balancer"))
    if ipaddress.ip_network(az.apim_subnet_range).prefixlen > 29:
        found.append(("azure.apim_subnet_range", "API Management needs at least a /29"))
    service = ipaddress.ip_network(az.service_cidr)
    if service.prefixlen < 12:
        found.append(("azure.service_cidr", "AKS takes a service range of /12 or smaller"))
    for key in ("pod_cidr", "service_cidr"):
        net = ipaddress.ip_network(getattr(az, key))
        clash = next((r for r in _AKS_RESERVED if net.overlaps(r)), None)  # type: ignore[arg-type]
        if clash is not None:
            found.append((f"azure.{key}", f"must not overlap {clash}, which AKS reserves"))
    if ipaddress.ip_address(az.dns_service_ip) == service.network_address + 1:
        found.append(("azure.dns_service_ip", "must not be the first address of "
                                              "azure.service_cidr (the Kubernetes API takes it)"))
    return found


def validate(ctx: AzureContext) -> None:
    """Raise BackendError naming every bad key before anything is created."""
    found = problems(ctx)
    if found:
        raise BackendError("; ".join(f"{key}: {message}" for key, message in found))


# --------------------------------------------------------------------------- reading


def arm_get(ctx: AzureContext, path: str, api_version: str,
            **params: str) -> dict[str, Any] | None:
    """GET an ARM resource (or collection) as JSON; None when Azure answers 404.

    Raises:
        azure.core.exceptions.HttpResponseError: any other error (callers translate it).
    """
    from azure.core.rest import HttpRequest

    request = HttpRequest("GET", path, params={"api-version": api_version, **params})
    response = ctx.client("resources").send_request(request)
    if response.status_code == 404:
        return None
    raise_for_status(response)
    body = response.json()
    return body if isinstance(body, dict) else {}


def arm_list(ctx: AzureContext, path: str, api_version: str, **params: str) -> list[Any]:
    """Every item of an ARM collection, following ``nextLink``; [] when it is missing."""
    from azure.core.rest import HttpRequest

    page = arm_get(ctx, path, api_version, **params)
    items: list[Any] = []
    while page is not None:
        items.extend(page.get("value") or [])
        link = page.get("nextLink")
        if not link:
            break
        response = ctx.client("resources").send_request(HttpRequest("GET", link))
        raise_for_status(response)
        page = response.json()
    return items


def arm_post(ctx: AzureContext, path: str, api_version: str) -> Any:
    """POST an ARM action (``…/listKeys``) and return the answer (the caller keeps secrets
    out of logs)."""
    from azure.core.rest import HttpRequest

    response = ctx.client("resources").send_request(
        HttpRequest("POST", path, params={"api-version": api_version}))
    raise_for_status(response)
    return response.json() if response.content else None


def raise_for_status(response: Any) -> None:
    """Raise the SDK's exception for an ARM error answer (ARM error body parsed)."""
    if response.status_code < 400:
        return
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        map_error,
    )
    from azure.mgmt.core.exceptions import ARMErrorFormat

    error_map = {401: ClientAuthenticationError, 404: ResourceNotFoundError,
                 409: ResourceExistsError}
    map_error(status_code=response.status_code, response=response, error_map=error_map)
    raise HttpResponseError(response=response, error_format=ARMErrorFormat)


# --------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Desired:
    """One resource as the chain wants it.

    ``body`` is what a create or update sends (wire format); ``watch`` the (label, path)
    pairs compared with Azure's resource, a path like
    ``properties.subnets[name=aks].properties.addressPrefix``; ``create_only`` is added to
    the body only when creating (a key vault's empty access policies, which an update would
    otherwise wipe).
    """

    key: str
    kind: str
    name: str
    resource_id: str
    api_version: str
    body: Mapping[str, Any]
    watch: tuple[tuple[str, str], ...] = ()
    create_only: Mapping[str, Any] | None = None

    def changes(self, current: Mapping[str, Any]) -> tuple[str, ...]:
        """The watched properties that differ, as ``"label: theirs -> ours"`` (a mapping
        property key by key: ``"configuration_settings.enableInference: 'False' -> 'True'"``)."""
        return tuple(line for label, path in self.watch
                     for line in _differences(label, lookup(self.body, path),
                                              lookup(current, path)))

    def create_body(self) -> dict[str, Any]:
        return overlay(dict(self.body), self.create_only or {})

    def update_body(self, current: Mapping[str, Any]) -> dict[str, Any]:
        """Azure's resource with ours laid over it: what we do not manage (another subnet, a
        rule someone added, the cluster's Kubernetes version) is sent back unchanged."""
        return overlay(current, self.body)


_SEGMENT = re.compile(r"^([A-Za-z0-9_]+)(?:\[name=([^\]]+)\])?$")


def lookup(doc: Any, path: str) -> Any:
    """The value at ``path`` (keys case-insensitive, ``[name=x]`` picks a list item), or
    MISSING."""
    node = doc
    for part in path.split("."):
        match = _SEGMENT.match(part)
        if match is None:
            raise ValueError(f"bad path segment {part!r}")
        key, name = match.groups()
        node = _get_ci(node, key)
        if name is not None and node is not MISSING:
            node = next((i for i in node if isinstance(i, Mapping)
                         and str(i.get("name", "")).lower() == name.lower()), MISSING) \
                if isinstance(node, list) else MISSING
        if node is MISSING:
            return MISSING
    return node


def _get_ci(node: Any, key: str) -> Any:
    if not isinstance(node, Mapping):
        return MISSING
    if key in node:
        return node[key]
    lowered = key.lower()
    return next((v for k, v in node.items() if str(k).lower() == lowered), MISSING)


def same(ours: Any, theirs: Any) -> bool:
    """Whether Azure's value matches ours: mappings by our keys only, strings ignoring case
    (Azure upper-cases VM sizes and ids' resource groups), lists item by item."""
    if ours is MISSING:
        return True
    if theirs is MISSING:
        return ours is None
    if isinstance(ours, Mapping):
        return isinstance(theirs, Mapping) and all(same(v, _get_ci(theirs, k))
                                                   for k, v in ours.items())
    if isinstance(ours, list | tuple):
        return isinstance(theirs, list | tuple) and len(ours) == len(theirs) and all(
            same(a, b) for a, b in zip(ours, theirs, strict=True))
    if isinstance(ours, str):
        return isinstance(theirs, str) and ours.lower() == theirs.lower()
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs
    return bool(ours == theirs)


def _differences(label: str, ours: Any, theirs: Any) -> Iterator[str]:
    if same(ours, theirs):
        return
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        for key, value in ours.items():
            yield from _differences(f"{label}.{key}", value, _get_ci(theirs, key))
        return
    yield f"{label}: {show(theirs)} -> {show(ours)}"


def show(value: Any) -> str:
    """A short printable value for a plan's change line."""
    if value is MISSING:
        return "(unset)"
    text = repr(_plain(value))
    return text if len(text) <= 160 else text[:157] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if k not in ("etag", "provisioningState")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``: mappings merged key by key, lists of named items merged
    by name (base's other items kept, in place), other values replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in over.items():
        current = merged.get(key, MISSING)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = overlay(current, value)
        elif _named(value) and _named(current):
            merged[key] = _merge_named(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _named(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, Mapping) and "name" in i for i in value)


def _merge_named(base: Sequence[Mapping[str, Any]],
                 over: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    ours = {str(i["name"]).lower(): i for i in over}
    merged = [overlay(i, ours.pop(str(i["name"]).lower())) if str(i["name"]).lower() in ours
              else copy.deepcopy(dict(i)) for i in base]
    merged.extend(copy.deepcopy(dict(i)) for i in over if str(i["name"]).lower() in ours)
    return merged


def wire(model: Any) -> dict[str, Any]:
    """An SDK model's REST body (new-style models are mappings; msrest ones serialize)."""
    if isinstance(model, Mapping):
        return dict(model.as_dict()) if hasattr(model, "as_dict") else dict(model)
    return dict(model.serialize())
