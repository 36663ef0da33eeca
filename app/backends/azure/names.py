"""The names the azure backend gives to what it creates, in one place.

Provisioning, plan, endpoints and API Management all import these, so a plan lists the names a
deploy and a publish will use. Names of things the pipeline file names (workspace, cluster,
VNET, API Management service) are the file's; this module derives the others:

- one Kubernetes online endpoint per environment, ``<workspace>-<environment>`` (Azure ML
  endpoint names are unique per region, 3-32 letters, digits and dashes, starting with a
  letter: longer or odd names are shortened with a stable hash suffix);
- blue/green as two online deployments of that endpoint, named ``blue`` and ``green``;
- one API per environment, named and pathed like the local gateway's
  (``gateway.name_for``/``path_for``: prod plain, others suffixed/prefixed), with the ``score``
  operation and its API-scope policy (id ``policy``);
- named values as the default policy names them (app.gateway.template): ``<env>-backend-key``
  (secret), ``<env>-backend-url`` and the shared ``issuer-url``.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from app.gateway.template import ISSUER_URL_NAME, backend_key_name, backend_url_name

if TYPE_CHECKING:
    from app.backends.azure.context import AzureContext

#: The two online deployments of an environment's endpoint (blue/green).
DEPLOYMENT_SLOTS: tuple[str, str] = ("blue", "green")
#: API Management's id of an API's policy (API scope).
POLICY_ID = "policy"
#: The operation every published API carries.
SCORE_OPERATION_ID = "score"
#: The Azure ML extension's name on the cluster and its release namespace.
EXTENSION_NAME = "azureml"
EXTENSION_NAMESPACE = "azureml"
#: The AKS and API Management subnets of the VNET.
AKS_SUBNET = "aks"
APIM_SUBNET = "apim"

_ENDPOINT_MAX = 32
_ENDPOINT_OK = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


def endpoint_name(ctx: AzureContext, environment: str) -> str:
    """The Kubernetes online endpoint serving ``environment``: ``<workspace>-<environment>``,
    made valid for Azure ML (letters, digits, dashes; 3-32 characters; starts with a letter)."""
    return endpoint_name_for(ctx.workspace, environment)


def endpoint_name_for(workspace: str, environment: str) -> str:
    """:func:`endpoint_name` from the bare names (no context needed)."""
    wanted = f"{workspace}-{environment}"
    cleaned = re.sub(r"[^a-zA-Z0-9-]+", "-", wanted).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = f"ep-{cleaned}"
    if cleaned == wanted and _ENDPOINT_OK.match(cleaned):
        return cleaned
    # Shortened or changed: a hash of the wanted name keeps two environments apart.
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:6]
    head = cleaned[:_ENDPOINT_MAX - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def deployment_name(slot: str) -> str:
    """The online deployment of a slot (``blue`` or ``green``)."""
    if slot not in DEPLOYMENT_SLOTS:
        raise ValueError(f"slot must be one of {', '.join(DEPLOYMENT_SLOTS)}, not {slot!r}")
    return slot


def api_name(ctx: AzureContext, environment: str) -> str:
    """The API Management API id of an environment (as on the local gateway)."""
    return ctx.config.gateway.name_for(environment)


def api_path(ctx: AzureContext, environment: str) -> str:
    """The API's URL suffix in API Management (as on the local gateway)."""
    return ctx.config.gateway.path_for(environment)


def key_named_value(environment: str) -> str:
    """The secret named value holding the key API Management presents to the endpoint."""
    return backend_key_name(environment)


def url_named_value(environment: str) -> str:
    """The named value holding the endpoint's scoring base URL."""
    return backend_url_name(environment)


#: The plain named value holding the token issuer's URL (shared by every API).
ISSUER_NAMED_VALUE = ISSUER_URL_NAME


def named_values(environment: str) -> tuple[str, str]:
    """The environment's own named values: (key, url)."""
    return key_named_value(environment), url_named_value(environment)


def subnet_id(ctx: AzureContext, subnet: str) -> str:
    """The ARM id of one of the VNET's subnets (``aks`` or ``apim``)."""
    return ctx.resource_id(f"Microsoft.Network/virtualNetworks/{ctx.azure.vnet_name}"
                           f"/subnets/{subnet}")


def apim_nsg_name(ctx: AzureContext) -> str:
    """The network security group on the API Management subnet."""
    return f"{ctx.azure.vnet_name}-{APIM_SUBNET}-nsg"


def attached_compute_name(ctx: AzureContext) -> str:
    """The AKS cluster's name as an Azure ML compute (the cluster's own name; Azure ML
    compute names are at most 16 characters, so a longer one is shortened)."""
    name = ctx.azure.aks_cluster
    if len(name) <= 16:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:4]
    return f"{name[:11].rstrip('-')}-{digest}"


# --------------------------------------------------------------------------- the workspace's own


def _unique_suffix(ctx: AzureContext, length: int) -> str:
    """A stable suffix for names Azure wants globally unique (storage accounts, key vaults):
    a hash of the subscription, resource group and workspace."""
    seed = f"{ctx.subscription_id}/{ctx.resource_group}/{ctx.workspace}".lower()
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def storage_account_name(ctx: AzureContext) -> str:
    """The workspace's storage account: 3-24 lower-case letters and digits, globally unique."""
    head = re.sub(r"[^a-z0-9]", "", ctx.workspace.lower())[:14] or "mg"
    return f"{head}{_unique_suffix(ctx, 10)}"


def key_vault_name(ctx: AzureContext) -> str:
    """The workspace's key vault: 3-24 letters, digits and dashes, starting with a letter,
    globally unique (and reserved while soft-deleted: teardown purges it)."""
    head = re.sub(r"[^a-zA-Z0-9]+", "-", ctx.workspace).strip("-")[:12].rstrip("-")
    if not head[:1].isalpha():
        head = f"kv{head}"[:12].rstrip("-")
    return f"{head}-kv-{_unique_suffix(ctx, 8)}"


def log_analytics_name(ctx: AzureContext) -> str:
    """The Log Analytics workspace behind the workspace's Application Insights."""
    return f"{ctx.workspace}-logs"


def insights_name(ctx: AzureContext) -> str:
    """The workspace's Application Insights component."""
    return f"{ctx.workspace}-insights"


#: The workspace's default blob datastore (Azure ML creates it with the workspace).
DEFAULT_DATASTORE = "workspaceblobstore"


def dataset_blob_path(dataset: str, sha256: str, filename: str) -> str:
    """Where a dataset version's file goes in the default datastore: by content hash, so an
    upload is idempotent and two versions never share a blob."""
    return f"modelgate/datasets/{dataset}/{sha256[:16]}/{filename}"
