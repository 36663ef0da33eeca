"""What the fake Azure adds for provisioning: what Azure fills in on the resources provisioning
creates, and the actions and hosts it calls besides ARM's PUT/GET/DELETE.

Shapes after the response examples in azure-rest-api-specs (2024-05-01 API Management
``ApiManagementCreateServiceInVnetWithPublicIP``, ``ApiManagementServiceCheckNameAvailability``,
``ApiManagementDeletedServicesListBySubscription``; AKS ``ManagedClustersCreate_*``; storage
``StorageAccountListKeys``; Machine Learning workspaces and datastores) and Azure Storage's
Put Blob answer. Installed by FakeAzure.install_areas(); tests reach the state through the
helpers below.
"""

from __future__ import annotations

import base64
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from tests.azure.fake_azure import (
    ARM,
    SUBSCRIPTION,
    TENANT,
    Answer,
    FakeAzure,
    Recorded,
    arm_error,
)

#: The storage account key the fake hands out (base64, as Azure's; SharedKey signs with it).
STORAGE_KEY = base64.b64encode(b"modelgate-fake-storage-account-key!").decode()
_BLOB_HOST = re.compile(r"^https://([a-z0-9]+)\.blob\.core\.windows\.net/([^/]+)/(.+)$")


def _uid(seed: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, seed.lower()))


def deleted_apim_id(name: str, location: str = "westeurope") -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.ApiManagement/locations/"
            f"{location}/deletedservices/{name}")


def deleted_vault_id(name: str, location: str = "westeurope") -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.KeyVault/locations/{location}"
            f"/deletedVaults/{name}")


def blobs(fake: FakeAzure) -> dict[str, bytes]:
    """Uploaded blobs by ``account/container/path``."""
    return fake.__dict__.setdefault("blobs", {})


def taken_apim_names(fake: FakeAzure) -> set[str]:
    """API Management names other subscriptions hold (checkNameAvailability: AlreadyExists)."""
    return fake.__dict__.setdefault("taken_apim_names", set())


def soft_delete_apim(fake: FakeAzure, name: str, location: str = "westeurope") -> None:
    """A soft-deleted API Management service holding ``name``."""
    fake.put_resource(deleted_apim_id(name, location), {
        "location": "West Europe", "type": "Microsoft.ApiManagement/deletedservices",
        "properties": {"serviceId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/old-rg/"
                                    f"providers/Microsoft.ApiManagement/service/{name}",
                       "scheduledPurgeDate": "2026-12-30T10:00:00Z",
                       "deletionDate": "2026-12-02T10:00:00Z"}})


# --------------------------------------------------------------------------- resource hooks


def _cluster(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any) -> dict[str, Any]:
    props = body.setdefault("properties", {})
    name = rid.rsplit("/", 1)[-1]
    identity = body.setdefault("identity", {"type": "SystemAssigned"})
    identity.setdefault("principalId", _uid(f"principal:{rid}"))
    identity.setdefault("tenantId", TENANT)
    props.setdefault("kubernetesVersion", "1.30.6")
    props.setdefault("nodeResourceGroup", f"MC_modelgate-rg_{name}_westeurope")
    props["privateFQDN"] = f"{name}-dns-1a2b3c4d.privatelink.westeurope.azmk8s.io"
    props["powerState"] = {"code": "Running"}
    for pool in props.get("agentPoolProfiles") or []:
        pool.setdefault("orchestratorVersion", props["kubernetesVersion"])
        pool["provisioningState"] = "Succeeded"
    return body


def _apim(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any) -> dict[str, Any]:
    name = rid.rsplit("/", 1)[-1]
    props = body.setdefault("properties", {})
    props.update({
        "gatewayUrl": f"https://{name}.azure-api.net",
        "developerPortalUrl": f"https://{name}.developer.azure-api.net",
        "managementApiUrl": f"https://{name}.management.azure-api.net",
        "publicIPAddresses": ["20.47.137.10"], "privateIPAddresses": None,
        "platformVersion": "stv2", "targetProvisioningState": "",
        "notificationSenderEmail": "apimgmt-noreply@mail.windowsazure.com",
        "createdAtUtc": "2026-12-08T09:00:00Z",
        "hostnameConfigurations": [{"type": "Proxy", "hostName": f"{name}.azure-api.net",
                                    "negotiateClientCertificate": False,
                                    "defaultSslBinding": True,
                                    "certificateSource": "BuiltIn"}]})
    body["etag"] = "AAAAAAAGTAs="
    return body


def _workspace(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any) -> dict[str, Any]:
    props = body.setdefault("properties", {})
    workspace_id = _uid(f"workspace:{rid}")
    props.setdefault("workspaceId", workspace_id)
    props["discoveryUrl"] = "https://westeurope.api.azureml.ms/discovery"
    props["mlFlowTrackingUri"] = (f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{rid}")
    body.setdefault("identity", {})["principalId"] = _uid(f"ws-principal:{rid}")
    account = str(props.get("storageAccount", "")).rsplit("/", 1)[-1]
    # Azure ML creates the workspace's default datastores with the workspace.
    fake.put_resource(f"{rid}/datastores/workspaceblobstore", {"properties": {
        "datastoreType": "AzureBlob", "accountName": account,
        "containerName": f"azureml-blobstore-{props['workspaceId']}",
        "endpoint": "core.windows.net", "protocol": "https", "isDefault": True,
        "subscriptionId": SUBSCRIPTION, "resourceGroup": rid.split("/")[4],
        "credentials": {"credentialsType": "AccountKey"}}})
    return body


def _storage(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any) -> dict[str, Any]:
    name = rid.rsplit("/", 1)[-1]
    body.setdefault("properties", {})["primaryEndpoints"] = {
        "blob": f"https://{name}.blob.core.windows.net/",
        "dfs": f"https://{name}.dfs.core.windows.net/"}
    return body


def _compute(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any) -> dict[str, Any]:
    props = body.setdefault("properties", {})
    inner = props.get("properties") or {}
    if "vmSize" in inner:  # Azure ML answers VM sizes in capitals
        inner["vmSize"] = str(inner["vmSize"]).upper()
    props["computeLocation"] = body.get("location", "westeurope")
    return body


def _role(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any) -> dict[str, Any]:
    props = body.setdefault("properties", {})
    props["scope"] = rid.split("/providers/Microsoft.Authorization/")[0]
    props["createdOn"] = "2026-12-08T09:10:00Z"
    return body


def _extension(fake: FakeAzure, rid: str, body: dict[str, Any], existing: Any
               ) -> dict[str, Any]:
    props = body.setdefault("properties", {})
    props["currentVersion"] = "1.1.64"
    props["aksAssignedIdentity"] = {"principalId": _uid(f"ext:{rid}"), "tenantId": TENANT,
                                    "type": "SystemAssigned"}
    return body


# --------------------------------------------------------------------------- routes


def _check_name(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    name = str((request.body or {}).get("name", ""))
    soft_deleted = any(key.endswith(f"/deletedservices/{name.lower()}")
                       for key in fake.resources)
    if name.lower() in {n.lower() for n in taken_apim_names(fake)} or soft_deleted:
        return Answer(200, {"nameAvailable": False, "reason": "AlreadyExists",
                            "message": f"{name} is already in use"})
    return Answer(200, {"nameAvailable": True, "reason": "Valid", "message": ""})


def _deleted_services(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    return Answer(200, {"value": [r for key, r in fake.resources.items()
                                  if "/providers/microsoft.apimanagement/locations/" in key
                                  and "/deletedservices/" in key]})


def _list_keys(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    account_id = request.path.rsplit("/listKeys", 1)[0]
    if fake.get(account_id) is None:
        return arm_error(404, "ResourceNotFound", "The storage account was not found.")
    return Answer(200, {"keys": [
        {"keyName": "key1", "value": STORAGE_KEY, "permissions": "FULL"},
        {"keyName": "key2", "value": base64.b64encode(b"second-key").decode(),
         "permissions": "FULL"}]})


def _put_blob(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    account, container, path = _BLOB_HOST.match(request.url.split("?")[0]).groups()  # type: ignore[union-attr]
    body = request.body
    data = body.encode() if isinstance(body, str) else b"" if body is None else \
        str(body).encode()
    blobs(fake)[f"{account}/{container}/{path}"] = data
    return Answer(201, None, {"ETag": '"0x8DCBADF00D"', "Last-Modified":
                              "Tue, 08 Dec 2026 09:20:00 GMT", "x-ms-version": "2025-01-05",
                              "x-ms-request-server-encrypted": "true"})


def _delete_group(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    """Deleting a resource group soft-deletes its API Management services and key vaults."""
    prefix = request.path.lower().rstrip("/") + "/"
    for key, resource in list(fake.resources.items()):
        if not key.startswith(prefix):
            continue
        name = key.rsplit("/", 1)[-1]
        if "/providers/microsoft.apimanagement/service/" in key and key.count("/") == \
                prefix.count("/") + 3:
            soft_delete_apim(fake, resource.get("name", name))
        if "/providers/microsoft.keyvault/vaults/" in key:
            fake.put_resource(deleted_vault_id(resource.get("name", name)), {
                "properties": {"vaultId": resource.get("id"), "location": "westeurope"}})
    return fake._arm_delete(request)  # the generic ARM delete (202 + Location, then 204)


def _purge_vault(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
    vault = request.path.rsplit("/purge", 1)[0]
    if fake.get(vault) is None:
        return arm_error(404, "ResourceNotFound", "The deleted vault was not found.")
    del fake.resources[vault.lower()]
    return Answer(202, None, {"Location": f"{ARM}{vault}/operation?api-version=2023-07-01"})


def install(fake: FakeAzure) -> None:
    fake.on_put(r"/Microsoft\.ContainerService/managedClusters/[^/]+$", _cluster)
    fake.on_put(r"/Microsoft\.ApiManagement/service/[^/]+$", _apim)
    fake.on_put(r"/Microsoft\.MachineLearningServices/workspaces/[^/]+$", _workspace)
    fake.on_put(r"/Microsoft\.Storage/storageAccounts/[^/]+$", _storage)
    fake.on_put(r"/workspaces/[^/]+/computes/[^/]+$", _compute)
    fake.on_put(r"/Microsoft\.Authorization/roleAssignments/[^/]+$", _role)
    fake.on_put(r"/Microsoft\.KubernetesConfiguration/extensions/[^/]+$", _extension)
    fake.route("POST", r"/providers/Microsoft\.ApiManagement/checkNameAvailability$")(
        _check_name)
    fake.route("GET", r"/subscriptions/[^/]+/providers/Microsoft\.ApiManagement/"
                      r"deletedservices$")(_deleted_services)
    fake.route("POST", r"/Microsoft\.Storage/storageAccounts/[^/]+/listKeys$")(_list_keys)
    fake.route("PUT", _BLOB_HOST.pattern)(_put_blob)
    fake.route("DELETE", r"management\.azure\.com/subscriptions/[^/]+/resourceGroups/[^/]+$")(
        _delete_group)
    fake.route("POST", r"/deletedVaults/[^/]+/purge$")(_purge_vault)


def hold_operations(fake: FakeAzure, id_pattern: str) -> Callable[[], None]:
    """Keep the long operations of PUTs on matching resources InProgress until the returned
    function is called (as API Management stays for 30-75 minutes), so a test can stop a job
    while it waits. The SDK's poller thread polls a held operation at most every 10 ms."""
    held: set[str] = set()
    released = threading.Event()
    new_operation = fake._new_operation

    def recording(request: Recorded, failure: Any) -> str:
        url = new_operation(request, failure)
        if request.method == "PUT" and re.search(id_pattern, request.path, re.I):
            held.add(url.split("?")[0].rsplit("/", 1)[-1])
        return url

    fake._new_operation = recording  # type: ignore[method-assign]

    @fake.route("GET", r"/providers/Fake\.Operations/operations/(op\d+)$")
    def status(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        if match.group(1) in held and not released.is_set():
            released.wait(0.01)
            return Answer(200, {"name": match.group(1), "status": "InProgress"},
                          {"Retry-After": "0"})
        return fake._operation_status(request.path)

    return released.set
