"""The dataset as an Azure ML data asset, versioned by content hash as locally.

The CSV's SHA-256 is the version's identity (tag ``sha256``): the same bytes find the version
registered for them; new bytes are uploaded to the workspace's default blob datastore under a
path named by the hash (an upload is idempotent) and become version max + 1. The upload goes
through an azure-storage-blob client on the other clients' transport, signed with the storage
account's key (Azure ML's own upload does the same with the datastore's secret; its client
would not take ``transport=``). The key is read when needed and never logged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from app.backends.azure import desired, infra, names
from app.backends.azure.context import AzureContext, azure_errors
from app.backends.azure.infra import API, lookup
from app.backends.base import BackendError, Progress, TransientBackendError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_versions(ctx: AzureContext) -> list[dict[str, Any]]:
    """The data asset's registered versions (ARM JSON), any order."""
    path = f"{desired.workspace_id(ctx)}/data/{ctx.config.data.dataset}/versions"
    return [v for v in infra.arm_list(ctx, path, API["data"]) if isinstance(v, dict)]


def matching_version(versions: list[dict[str, Any]], sha256: str) -> str | None:
    """The version registered for these bytes (tag ``sha256``), as locally."""
    for version in versions:
        if str(lookup(version, "properties.tags.sha256")) == sha256:
            return str(version.get("name"))
    return None


def next_version(versions: list[dict[str, Any]]) -> int:
    numbers = [int(v["name"]) for v in versions if str(v.get("name", "")).isdigit()]
    return max(numbers, default=0) + 1


def ensure(ctx: AzureContext, progress: Progress, percent: int
           ) -> tuple[str, str, dict[str, Any]]:
    """Find or register the configured CSV's version: (tally key, "created" or "existing",
    {name, version, sha256})."""
    name, path = ctx.config.data.dataset, ctx.config.data.path
    sha = file_sha256(path)
    with azure_errors(f"reading data asset {name}"):
        versions = dataset_versions(ctx)
    found = matching_version(versions, sha)
    if found is not None:
        return f"dataset:{name}@{found}", "existing", {"name": name, "version": found,
                                                       "sha256": sha}
    version = str(next_version(versions))
    blob = names.dataset_blob_path(name, sha, path.name)
    progress(percent + 2, f"data asset {name}: uploading {path.name}")
    upload(ctx, path, blob)
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data

    asset = Data(name=name, version=version, type=AssetTypes.URI_FILE,
                 path=f"azureml://datastores/{names.DEFAULT_DATASTORE}/paths/{blob}",
                 description=f"{path.name}, registered by modelgate",
                 tags={"sha256": sha, "source": path.name})
    with azure_errors(f"registering data asset {name}"):
        ctx.client("ml").data.create_or_update(asset)
    return f"dataset:{name}@{version}", "created", {"name": name, "version": version,
                                                    "sha256": sha}


def upload(ctx: AzureContext, path: Path, blob: str) -> None:
    """Upload to the workspace's default blob datastore through the clients' transport."""
    from azure.storage.blob import BlobClient

    with azure_errors("reading the workspace's default datastore"):
        store = infra.arm_get(ctx, f"{desired.workspace_id(ctx)}/datastores/"
                                   f"{names.DEFAULT_DATASTORE}", API["datastore"])
    props = (store or {}).get("properties") or {}
    account, container = props.get("accountName"), props.get("containerName")
    if not account or not container:
        raise TransientBackendError("the workspace's default datastore is not ready yet; "
                                    "will retry")
    account_id = (f"/subscriptions/{props.get('subscriptionId') or ctx.subscription_id}"
                  f"/resourceGroups/{props.get('resourceGroup') or ctx.resource_group}"
                  f"/providers/Microsoft.Storage/storageAccounts/{account}")
    with azure_errors(f"reading storage account {account}'s key"):
        keys = infra.arm_post(ctx, f"{account_id}/listKeys", API["storage"]) or {}
    key = next((k.get("value") for k in keys.get("keys", []) if k.get("value")), None)
    if not key:
        raise BackendError(f"storage account {account} gave no key: allow shared key access "
                           "on it (Azure ML's datastore needs it)")
    suffix = props.get("endpoint") or "core.windows.net"
    url = f"{props.get('protocol') or 'https'}://{account}.blob.{suffix}"
    kwargs = {k: v for k, v in ctx.client_kwargs.items() if k == "transport"}
    client = BlobClient(url, container, blob, credential=key, **kwargs)
    with azure_errors(f"uploading {path.name} to {account}/{container}"), open(path, "rb") as fh:
        client.upload_blob(fh, overwrite=True)
