"""Provisioning on Azure, on the SDKs' own code paths against the fake Azure: the requests each
step sends, idempotency, updates, errors a user can act on, a job killed while API Management
is being created, teardown and health."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

from app.backends.azure import names
from app.backends.azure.desired import role_assignment_name
from app.backends.azure.infra import NETWORK_CONTRIBUTOR
from app.backends.base import (
    BackendError,
    MemoryOperationStore,
    ProvisionSpec,
    ResourceConflict,
    TransientBackendError,
)
from app.pipeline_config import DEFAULT_PATH, load_pipeline_config, parse_pipeline_config
from tests.azure.conftest import azure_pipeline_settings
from tests.azure.fake_azure import SUBSCRIPTION, TENANT, FakeAzure, FakeCredential, rg_id
from tests.azure.fakes_provisioning import (
    STORAGE_KEY,
    blobs,
    deleted_apim_id,
    hold_operations,
    soft_delete_apim,
    taken_apim_names,
)

RG = rg_id()
CSV = load_pipeline_config(DEFAULT_PATH).data.path
CSV_SHA = hashlib.sha256(CSV.read_bytes()).hexdigest()
APIM = f"{RG}/providers/Microsoft.ApiManagement/service/modelgate-apim-test"
WS = f"{RG}/providers/Microsoft.MachineLearningServices/workspaces/modelgate-ws"
AKS = f"{RG}/providers/Microsoft.ContainerService/managedClusters/aks-modelgate"
VNET = f"{RG}/providers/Microsoft.Network/virtualNetworks/modelgate-vnet"


def spec(operations: Any = None, **azure: Any) -> ProvisionSpec:
    config = parse_pipeline_config(azure_pipeline_settings(**azure))
    return ProvisionSpec(workspace=config.workspace.name, environments=config.environment_names,
                         settings=config.to_dict(),
                         operations=operations or MemoryOperationStore())


class Steps(list[tuple[int, str]]):
    """A progress callback that records and checks the steps."""

    def __call__(self, percent: int, step: str) -> None:
        assert 0 <= percent <= 100 and step
        assert not self or percent >= self[-1][0], f"progress went back: {self[-1]} -> {step}"
        self.append((percent, step))


def body_of(fake: FakeAzure, method: str, pattern: str) -> Any:
    found = fake.calls(method, pattern)
    assert len(found) == 1, f"expected one {method} {pattern}, got {len(found)}"
    return found[0].body


def writes(fake: FakeAzure) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests
            if r.method != "GET" and "Fake.Operations" not in r.path]


# --------------------------------------------------------------------------- creating


def test_provision_creates_each_resource_with_the_sdks_requests(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    steps = Steps()
    result = azure_backend.provision(spec(), steps)

    # What was written, in order: the ARM resources, the dataset's blob, its data asset.
    puts = [(r.path.rsplit("/providers/", 1)[-1] if "/providers/" in r.path else r.path,
             r.api_version) for r in fake_azure.calls("PUT") if "management.azure" in r.url]
    assert [p for p, _ in puts] == [
        f"/subscriptions/{SUBSCRIPTION}/resourcegroups/modelgate-rg",
        "Microsoft.Network/networkSecurityGroups/modelgate-vnet-apim-nsg",
        "Microsoft.Network/virtualNetworks/modelgate-vnet",
        "Microsoft.ApiManagement/service/modelgate-apim-test",
        "Microsoft.ContainerService/managedClusters/aks-modelgate",
        f"Microsoft.Authorization/roleAssignments/"
        f"{fake_azure.calls('PUT', 'roleAssignments')[0].path.rsplit('/', 1)[-1]}",
        "Microsoft.KubernetesConfiguration/extensions/azureml",
        "Microsoft.OperationalInsights/workspaces/modelgate-ws-logs",
        "Microsoft.Insights/components/modelgate-ws-insights",
        f"Microsoft.Storage/storageAccounts/{names.storage_account_name(azure_backend.ctx)}",
        f"Microsoft.KeyVault/vaults/{names.key_vault_name(azure_backend.ctx)}",
        "Microsoft.MachineLearningServices/workspaces/modelgate-ws",
        "Microsoft.MachineLearningServices/workspaces/modelgate-ws/computes/cpu-cluster",
        "Microsoft.MachineLearningServices/workspaces/modelgate-ws/data/german-credit/"
        "versions/1",
        "Microsoft.MachineLearningServices/workspaces/modelgate-ws/computes/aks-modelgate",
    ]
    assert [v for _, v in puts] == [
        "2025-04-01", "2026-03-01", "2026-03-01", "2024-05-01", "2026-08-01", "2022-04-01",
        "2023-05-01", "2022-10-01", "2020-02-02", "2023-05-01", "2023-07-01", "2024-04-01",
        "2023-08-01-preview", "2023-04-01-preview", "2023-08-01-preview"]

    # The VNET carries both subnets inline; the API Management subnet carries the NSG.
    vnet = body_of(fake_azure, "PUT", "virtualNetworks/modelgate-vnet$")
    assert vnet["properties"]["addressSpace"] == {"addressPrefixes": ["10.123.0.0/16"]}
    subnets = {s["name"]: s["properties"] for s in vnet["properties"]["subnets"]}
    assert subnets["aks"] == {"addressPrefix": "10.123.0.0/24"}
    assert subnets["apim"]["addressPrefix"] == "10.123.1.0/24"
    assert subnets["apim"]["networkSecurityGroup"]["id"] == \
        f"{RG}/providers/Microsoft.Network/networkSecurityGroups/modelgate-vnet-apim-nsg"

    # The NSG lets in what API Management needs and out where it goes.
    rules = {r["name"]: r["properties"] for r in
             body_of(fake_azure, "PUT", "networkSecurityGroups/")["properties"]["securityRules"]}

    def allowed(direction: str) -> set[tuple[str, str, tuple[str, ...]]]:
        return {(r["sourceAddressPrefix"], r["destinationAddressPrefix"],
                 tuple(r.get("destinationPortRanges") or [r["destinationPortRange"]]))
                for r in rules.values() if r["direction"] == direction
                and r["access"] == "Allow" and r["protocol"] == "Tcp"}

    assert allowed("Inbound") == {("Internet", "VirtualNetwork", ("80", "443")),
                                  ("ApiManagement", "VirtualNetwork", ("3443",)),
                                  ("AzureLoadBalancer", "VirtualNetwork", ("6390",))}
    assert allowed("Outbound") == {("VirtualNetwork", "Storage", ("443",)),
                                   ("VirtualNetwork", "Sql", ("1433",)),
                                   ("VirtualNetwork", "AzureKeyVault", ("443",)),
                                   ("VirtualNetwork", "AzureMonitor", ("1886", "443"))}

    # A private AKS on Azure CNI overlay, its service range outside the VNET.
    aks = body_of(fake_azure, "PUT", "managedClusters/aks-modelgate$")
    assert aks["identity"] == {"type": "SystemAssigned"}
    assert aks["properties"]["networkProfile"] == {
        "networkPlugin": "azure", "networkPluginMode": "overlay", "podCidr": "10.244.0.0/16",
        "serviceCidr": "10.124.0.0/16", "dnsServiceIP": "10.124.0.10",
        "loadBalancerSku": "standard"}
    assert aks["properties"]["apiServerAccessProfile"] == {"enablePrivateCluster": True}
    (pool,) = aks["properties"]["agentPoolProfiles"]
    assert (pool["mode"], pool["count"], pool["vmSize"], pool["vnetSubnetID"]) == (
        "System", 2, "Standard_D2s_v3", f"{VNET}/subnets/aks")

    # Network Contributor for the cluster's identity on its subnet, under a stable name.
    principal = fake_azure.get(AKS)["identity"]["principalId"]
    (role,) = fake_azure.calls("PUT", "roleAssignments")
    role_def = (f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/"
                f"roleDefinitions/{NETWORK_CONTRIBUTOR}")
    assert role.path == (f"{VNET}/subnets/aks/providers/Microsoft.Authorization/"
                         f"roleAssignments/"
                         f"{role_assignment_name(f'{VNET}/subnets/aks', role_def, principal)}")
    assert role.body["properties"] == {"roleDefinitionId": role_def, "principalId": principal,
                                       "principalType": "ServicePrincipal"}

    # The Azure ML extension: inference only, on an internal load balancer.
    ext = body_of(fake_azure, "PUT", "extensions/azureml$")["properties"]
    assert ext["extensionType"] == "Microsoft.AzureML.Kubernetes"
    assert ext["scope"] == {"cluster": {"releaseNamespace": "azureml"}}
    assert ext["configurationSettings"].items() >= {
        "enableTraining": "False", "enableInference": "True",
        "inferenceRouterServiceType": "loadBalancer", "internalLoadBalancerProvider": "azure",
        "allowInsecureConnections": "True", "inferenceRouterHA": "False"}.items()

    # The workspace and what it needs, as ARM bodies.
    ws = body_of(fake_azure, "PUT", "workspaces/modelgate-ws$")
    assert ws["identity"] == {"type": "SystemAssigned"}
    assert {k: ws["properties"][k].rsplit("/", 2)[-2] for k in
            ("storageAccount", "keyVault", "applicationInsights")} == {
        "storageAccount": "storageAccounts", "keyVault": "vaults",
        "applicationInsights": "components"}
    vault = body_of(fake_azure, "PUT", "vaults/")["properties"]
    assert vault["tenantId"] == TENANT and vault["accessPolicies"] == []
    insights = body_of(fake_azure, "PUT", "components/")["properties"]
    assert insights["WorkspaceResourceId"].endswith("workspaces/modelgate-ws-logs")

    compute = body_of(fake_azure, "PUT", "computes/cpu-cluster$")["properties"]
    assert compute["computeType"] == "AmlCompute"
    assert compute["properties"]["vmSize"] == "Standard_DS3_v2"
    assert compute["properties"]["scaleSettings"].items() >= {"minNodeCount": 0,
                                                              "maxNodeCount": 2}.items()
    attached = body_of(fake_azure, "PUT", "computes/aks-modelgate$")["properties"]
    assert (attached["computeType"], attached["resourceId"], attached["properties"]) == (
        "Kubernetes", AKS, {"namespace": "azureml"})

    # The dataset: uploaded to the default datastore by content hash, registered as v1.
    blob = f"modelgate/datasets/german-credit/{CSV_SHA[:16]}/german_credit_data.csv"
    data = body_of(fake_azure, "PUT", "data/german-credit/versions/1$")["properties"]
    assert data["dataUri"] == f"azureml://datastores/workspaceblobstore/paths/{blob}"
    assert data["dataType"] == "uri_file" and data["tags"]["sha256"] == CSV_SHA
    (uploaded,) = [r for r in fake_azure.requests if ".blob.core.windows.net" in r.url]
    container = fake_azure.get(f"{WS}/datastores/workspaceblobstore")["properties"][
        "containerName"]
    account = names.storage_account_name(azure_backend.ctx)
    assert blobs(fake_azure) == {f"{account}/{container}/{blob}": CSV.read_bytes()}
    assert uploaded.headers["authorization"].startswith(f"SharedKey {account}:")
    assert uploaded.headers["x-ms-blob-type"] == "BlockBlob"
    assert STORAGE_KEY not in str(uploaded.headers)

    # API Management: its name checked first, Developer SKU, External VNET mode.
    order = writes(fake_azure)
    check = next(i for i, w in enumerate(order) if w.endswith("checkNameAvailability"))
    assert check == order.index(f"PUT {APIM}") - 1
    assert body_of(fake_azure, "POST", "checkNameAvailability")["name"] == "modelgate-apim-test"
    apim = body_of(fake_azure, "PUT", "service/modelgate-apim-test$")
    assert apim["sku"] == {"name": "Developer", "capacity": 1}
    assert {k: apim["properties"][k] for k in ("publisherEmail", "publisherName",
                                               "virtualNetworkType",
                                               "virtualNetworkConfiguration")} == {
        "publisherEmail": "ops@example.com", "publisherName": "modelgate",
        "virtualNetworkType": "External",
        "virtualNetworkConfiguration": {"subnetResourceId": f"{VNET}/subnets/apim"}}

    assert result.existing == () and len(result.created) == 15
    assert "dataset:german-credit@1" in result.created
    assert result.details["dataset"] == {"name": "german-credit", "version": "1",
                                         "sha256": CSV_SHA}
    assert result.details["apim"]["gateway_url"] == "https://modelgate-apim-test.azure-api.net"
    assert result.details["endpoints"] == {"staging": "modelgate-ws-staging",
                                           "prod": "modelgate-ws-prod"}
    assert steps[-1] == (100, "provisioned")
    for resource in ("Resource group", "Virtual network", "AKS cluster", "Cluster extension",
                     "Azure ML workspace", "data asset", "API Management service"):
        assert any(resource in step for _, step in steps), resource


def test_a_second_run_sends_no_write_and_lists_everything_as_existing(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    first = azure_backend.provision(spec(), Steps())
    fake_azure.requests.clear()
    steps = Steps()
    second = azure_backend.provision(spec(), steps)
    # Decided: an unchanged resource gets no PUT at all (reads only), not an idempotent PUT.
    assert writes(fake_azure) == []
    assert {r.method for r in fake_azure.requests} == {"GET"}
    assert second.created == () and second.details["updated"] == []
    assert sorted(second.existing) == sorted(first.created)
    assert steps[-1] == (100, "provisioned")


def test_a_changed_setting_updates_only_what_differs_and_keeps_what_others_added(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    azure_backend.provision(spec(), Steps())
    # Someone added a subnet and an NSG rule of their own meanwhile.
    vnet = fake_azure.get(VNET)
    vnet["properties"]["subnets"].append({"name": "jumpbox",
                                          "properties": {"addressPrefix": "10.123.9.0/24"}})
    fake_azure.requests.clear()

    result = azure_backend.provision(spec(compute_max_nodes=4, aks_node_count=3,
                                          apim_subnet_range="10.123.2.0/24"), Steps())

    assert result.created == ()
    assert sorted(result.details["updated"]) == ["aks:aks-modelgate", "compute:cpu-cluster",
                                                 "extension:azureml", "vnet:modelgate-vnet"]
    assert result.details["changes"]["compute:cpu-cluster"] == ["max_nodes: 2 -> 4"]
    assert result.details["changes"]["vnet:modelgate-vnet"] == [
        "subnets.apim.address_prefix: '10.123.1.0/24' -> '10.123.2.0/24'"]
    assert result.details["changes"]["extension:azureml"] == [
        "configuration_settings.inferenceRouterHA: 'False' -> 'True'"]
    assert result.details["changes"]["aks:aks-modelgate"] == ["node_count: 2 -> 3"]
    sent = body_of(fake_azure, "PUT", "virtualNetworks/modelgate-vnet$")["properties"]
    subnets = {s["name"]: s["properties"] for s in sent["subnets"]}
    assert set(subnets) == {"aks", "apim", "jumpbox"}, "a subnet someone added is kept"
    assert subnets["apim"]["addressPrefix"] == "10.123.2.0/24"
    assert subnets["apim"]["networkSecurityGroup"]["id"].endswith("modelgate-vnet-apim-nsg")
    cluster = body_of(fake_azure, "PUT", "managedClusters/aks-modelgate$")
    assert cluster["properties"]["agentPoolProfiles"][0]["count"] == 3
    assert cluster["properties"]["kubernetesVersion"] == "1.30.6", "Azure's version is kept"
    assert body_of(fake_azure, "PUT", "computes/cpu-cluster$")["properties"]["properties"][
        "scaleSettings"]["maxNodeCount"] == 4
    # The extension's settings change by PATCH: a highly available router on 3 nodes.
    patch = body_of(fake_azure, "PATCH", "extensions/azureml$")
    assert patch["properties"]["configurationSettings"]["inferenceRouterHA"] == "True"
    assert not fake_azure.calls("PUT", "service/modelgate-apim-test$")


# --------------------------------------------------------------------------- settings and errors


@pytest.mark.parametrize(("azure", "key"), [
    ({"apim_name": ""}, "azure.apim_name"),
    ({"apim_name": "-starts-with-a-dash"}, "azure.apim_name"),
    ({"apim_email": ""}, "azure.apim_email"),
    ({"apim_email": "ops"}, "azure.apim_email"),
    ({"compute_name": "a-compute-name-too-long"}, "azure.compute_name"),
    ({"dns_service_ip": "10.124.0.1"}, "azure.dns_service_ip"),
    ({"apim_subnet_range": "10.123.1.0/30"}, "azure.apim_subnet_range"),
    ({"aks_subnet_range": "10.123.0.0/29", "aks_node_count": 5}, "azure.aks_subnet_range"),
    ({"service_cidr": "172.30.0.0/16", "dns_service_ip": "172.30.0.10"}, "azure.service_cidr"),
    ({"service_cidr": "10.128.0.0/11", "dns_service_ip": "10.128.0.10"}, "azure.service_cidr"),
    ({"tenant_id": ""}, "azure.tenant_id"),
])
def test_bad_settings_fail_before_any_call_naming_the_key(
        fake_azure: FakeAzure, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        azure: dict[str, Any], key: str) -> None:
    from app.backends.azure import AzureBackend

    monkeypatch.delenv("AZURE_TENANT_ID", raising=False)
    bad = spec(**azure)  # the backend and the job read the same pipeline file
    backend = AzureBackend.for_pipeline(
        parse_pipeline_config(bad.settings), credential=FakeCredential(), home=tmp_path,
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    with pytest.raises(BackendError, match=rf"(^|; ){key}: "):
        backend.provision(bad, Steps())
    assert fake_azure.requests == []


def test_settings_for_another_backend_keep_the_azure_backends_own(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    """The shipped file's empty azure section (as a local job's settings carry) keeps the
    backend's subscription, API Management name and the rest."""
    shipped = load_pipeline_config(DEFAULT_PATH).to_dict()
    shipped["workspace"]["name"] = "modelgate-ws"
    result = azure_backend.provision(ProvisionSpec("modelgate-ws", settings=shipped), Steps())
    assert "apim:modelgate-apim-test" in result.created
    assert result.details["subscription_id"] == SUBSCRIPTION


def test_a_bad_subscription_environment_dataset_or_file_fails_before_any_call(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    with pytest.raises(BackendError, match="azure.subscription_id: must be a subscription id"):
        azure_backend.provision(spec(subscription_id="my-subscription"), Steps())
    # (an empty one keeps the backend's: test_settings_for_another_backend_keep_…)
    broken = spec().settings | {"azure": {**spec().settings["azure"],
                                          "aks_subnet_range": "10.99.0.0/24"}}
    with pytest.raises(BackendError, match="azure.aks_subnet_range: must lie inside"):
        azure_backend.provision(ProvisionSpec("modelgate-ws", settings=broken), Steps())
    with pytest.raises(BackendError, match="environments.qa: not in the pipeline configuration"):
        azure_backend.provision(ProvisionSpec("modelgate-ws", ("staging", "qa"),
                                              spec().settings), Steps())
    with pytest.raises(BackendError, match="data.path: dataset file not found"):
        azure_backend.provision(ProvisionSpec("modelgate-ws", settings=spec().settings | {
            "data": {"dataset": "german-credit", "path": "/nowhere/missing.csv"}}), Steps())
    assert fake_azure.requests == []


@pytest.mark.parametrize("how", ["taken", "soft-deleted"])
def test_a_taken_or_soft_deleted_apim_name_is_refused_before_creating_it(
        azure_backend: Any, fake_azure: FakeAzure, how: str) -> None:
    if how == "taken":
        taken_apim_names(fake_azure).add("modelgate-apim-test")
        expected = "azure.apim_name: 'modelgate-apim-test' is taken .*choose another"
    else:
        soft_delete_apim(fake_azure, "modelgate-apim-test")
        expected = ("azure.apim_name: 'modelgate-apim-test' belongs to a soft-deleted API "
                    "Management service.*az apim deletedservice purge --service-name "
                    "modelgate-apim-test --location West Europe")
    with pytest.raises(BackendError, match=expected):
        azure_backend.provision(spec(), Steps())
    assert not fake_azure.calls("PUT", "Microsoft.ApiManagement/service/")
    assert not fake_azure.calls("PUT", "managedClusters"), "it stopped before the cluster"


def test_azure_errors_become_messages_a_user_can_act_on(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    fake_azure.fail("PUT", "managedClusters/aks-modelgate$", 400, "QuotaExceeded",
                    "Provisioning of resource(s) for container service aks-modelgate failed: "
                    "Operation could not be completed as it results in exceeding approved "
                    "standardDSv3Family Cores quota.")
    with pytest.raises(BackendError, match="quota is exhausted.*standardDSv3Family Cores quota"):
        azure_backend.provision(spec(), Steps())

    fake_azure.fail("PUT", "managedClusters/aks-modelgate$", 400, "SkuNotAvailable",
                    "The requested VM size Standard_D2s_v3 is currently not available in "
                    "location 'westeurope'.")
    with pytest.raises(BackendError, match="region does not offer this size.*Standard_D2s_v3"):
        azure_backend.provision(spec(), Steps())

    fake_azure.fail("PUT", "virtualNetworks/modelgate-vnet$", 409,
                    "AnotherOperationInProgress",
                    "Another operation on this or dependent resource is in progress.")
    fake_azure.resources.pop(VNET.lower())
    with pytest.raises(ResourceConflict, match="AnotherOperationInProgress"):
        azure_backend.provision(spec(), Steps())


def test_throttling_is_retried_after_what_azure_asked(azure_backend: Any,
                                                      fake_azure: FakeAzure) -> None:
    fake_azure.fail("GET", "virtualNetworks/modelgate-vnet$", 429, "TooManyRequests",
                    "Number of read requests exceeded the limit.", headers={"Retry-After": "17"})
    result = azure_backend.provision(spec(), Steps())
    assert "vnet:modelgate-vnet" in result.created
    assert 17.0 in fake_azure.sleeps


def test_a_failed_resource_reports_its_own_message_and_the_retry_starts_it_again(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    store = MemoryOperationStore()
    fake_azure.fail_provisioning(r"service/modelgate-apim-test$", "ActivationFailed",
                                 "API Management service activation failed: the subnet's "
                                 "network security group blocks port 3443.")
    with pytest.raises(BackendError, match="blocks port 3443"):
        azure_backend.provision(spec(store), Steps())
    assert store.tokens == {}, "a failed operation is not resumed"
    puts = len(fake_azure.calls("PUT", "service/modelgate-apim-test$"))
    # The failed service exists in state Failed: the next attempt sends it again.
    result = azure_backend.provision(spec(store), Steps())
    assert len(fake_azure.calls("PUT", "service/modelgate-apim-test$")) == puts + 1
    assert "apim:modelgate-apim-test" in result.details["updated"] + list(result.created)


def test_role_assignment_conflicts_and_a_principal_not_yet_visible(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    fake_azure.fail("PUT", "roleAssignments/", 400, "PrincipalNotFound",
                    "Principal 1f0e... does not exist in the directory 11111111-....")
    with pytest.raises(TransientBackendError, match="identity is not visible yet"):
        azure_backend.provision(spec(), Steps())
    fake_azure.fail("PUT", "roleAssignments/", 409, "RoleAssignmentExists",
                    "The role assignment already exists.")
    result = azure_backend.provision(spec(), Steps())
    assert "role-assignment:aks" in result.existing


# --------------------------------------------------------------------------- a killed job


class Killed(Exception):
    """The worker died (raised by the progress callback)."""


def kill_while_waiting_for_apim(percent: int, step: str) -> None:
    if step.startswith("API Management service") and step.endswith("min)"):
        raise Killed()


def test_a_job_killed_while_apim_is_created_resumes_from_its_token_with_gets_only(
        azure_backend: Any, fake_azure: FakeAzure, azure_pipeline: Any, tmp_path: Path) -> None:
    from app.backends.azure import AzureBackend

    release = hold_operations(fake_azure, r"/service/modelgate-apim-test$")
    store = MemoryOperationStore()
    with pytest.raises(Killed):
        azure_backend.provision(spec(store), kill_while_waiting_for_apim)
    release()  # API Management finishes while no worker watches
    assert set(store.tokens) == {"apim:modelgate-apim-test", "apim:modelgate-apim-test#state"}
    seen = len(fake_azure.requests)

    # The retry runs in a new worker: new clients, the job's stored tokens.
    retry = AzureBackend.for_pipeline(
        azure_pipeline, credential=FakeCredential(), home=tmp_path / "other",
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    steps = Steps()
    result = retry.provision(spec(store), steps)
    again = fake_azure.requests[seen:]
    assert {r.method for r in again} == {"GET"}, [f"{r.method} {r.path}" for r in again
                                                 if r.method != "GET"]
    assert any("Fake.Operations" in r.path for r in again), "it polled the operation"
    assert "apim:modelgate-apim-test" in result.created
    assert len(result.existing) == 14
    assert any("resuming the operation already under way" in s for _, s in steps)
    assert store.tokens == {}


def test_the_provision_job_keeps_tokens_on_its_row_and_a_retry_resumes_them(
        tmp_path: Path, redis_server: Any, database_url: str, fake_azure: FakeAzure,
        azure_pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real provision service and JobOperationStore on SQLite and PostgreSQL."""
    import yaml
    from sqlalchemy import create_engine, select

    from app.backends.azure import AzureBackend
    from app.db import Job, JobStatus
    from app.extensions import db
    from app.services import provisioning
    from tests.conftest import build_app

    config_file = tmp_path / "pipeline.yml"
    config_file.write_text(yaml.safe_dump(azure_pipeline_settings()))
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(config_file))
    app = build_app(tmp_path, database_url, redis_server.url)
    release = hold_operations(fake_azure, r"/service/modelgate-apim-test$")

    class Reporter:
        def __init__(self, job_id: str, progress: Any) -> None:
            self.job_id, self._progress, self.lines = job_id, progress, []

        def progress(self, percent: int, step: str) -> None:
            self._progress(percent, step)

        def log(self, message: str, *, level: str = "INFO") -> None:
            self.lines.append(message)

        def check_cancelled(self) -> None:
            pass

    def backend_for_a_new_worker() -> Any:
        return AzureBackend.for_pipeline(
            azure_pipeline, credential=FakeCredential(), home=tmp_path / "home",
            client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})

    with app.app_context():
        job = Job(kind="provision", status=JobStatus.RUNNING, requested_by="alice", params={})
        db.session.add(job)
        db.session.commit()
        job_id = job.id
        app.extensions["modelgate.backend"] = backend_for_a_new_worker()
        with pytest.raises(Killed):
            provisioning.run_provision(Reporter(job_id, kill_while_waiting_for_apim), {})
    release()

    # Committed at once: another connection (the next worker's) sees the token.
    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = conn.execute(select(Job.operations).where(Job.id == job_id)).scalar_one()
    engine.dispose()
    assert set(stored) == {"apim:modelgate-apim-test", "apim:modelgate-apim-test#state"}
    assert all(isinstance(t, str) and t for t in stored.values())
    seen = len(fake_azure.requests)

    with app.app_context():
        app.extensions["modelgate.backend"] = backend_for_a_new_worker()
        reporter = Reporter(job_id, Steps())
        result = provisioning.run_provision(reporter, {})
        left = db.session.scalar(select(Job.operations).where(Job.id == job_id))
    assert {r.method for r in fake_azure.requests[seen:]} == {"GET"}
    assert "apim:modelgate-apim-test" in result["created"]
    assert "resuming operations already under way: apim:modelgate-apim-test" in reporter.lines
    assert result["backend"] == "azure" and result["workspace"] == "modelgate-ws"
    assert not left, "finished operations leave no token behind"


def test_the_azure_provision_kind_gets_a_time_limit_longer_than_api_management_takes(
        ) -> None:
    from app.backends.azure.provisioning import APIM_WAIT_SECONDS
    from app.config import BaseConfig, celery_settings, load_config
    from app.services.kinds import JobKind, time_limit_options

    config = load_config({"TESTING": True, "BACKEND": "azure"})
    options = time_limit_options(JobKind.PROVISION, config)
    assert options["soft_time_limit"] == BaseConfig.AZURE_PROVISION_TIME_LIMIT_SECONDS
    # an attempt stops waiting for API Management (and retries, resuming) before its limit
    assert options["soft_time_limit"] > APIM_WAIT_SECONDS + 20 * 60 > 75 * 60
    assert time_limit_options(JobKind.PIPELINE, config)["soft_time_limit"] > \
        options["soft_time_limit"]
    assert time_limit_options(JobKind.PROVISION, {**config, "BACKEND": "local"}) == {}
    visibility = celery_settings(config)["broker_transport_options"]["visibility_timeout"]
    assert visibility > time_limit_options(JobKind.PIPELINE, config)["time_limit"]
    shorter = load_config({"TESTING": True, "BACKEND": "azure",
                           "AZURE_PROVISION_TIME_LIMIT_SECONDS": 9000})
    assert time_limit_options(JobKind.PROVISION, shorter) == {"soft_time_limit": 9000,
                                                             "time_limit": 9060}


# --------------------------------------------------------------------------- teardown, health


def test_teardown_deletes_the_group_and_purges_what_stays_reserved(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    azure_backend.provision(spec(), Steps())
    vault = names.key_vault_name(azure_backend.ctx)
    fake_azure.requests.clear()
    steps = Steps()
    azure_backend.teardown("modelgate-ws", steps)
    assert writes(fake_azure) == [
        f"DELETE {RG.replace('resourceGroups', 'resourcegroups')}",  # as the SDK spells it
        f"DELETE {deleted_apim_id('modelgate-apim-test')}",
        f"POST /subscriptions/{SUBSCRIPTION}/providers/Microsoft.KeyVault/locations/westeurope"
        f"/deletedVaults/{vault}/purge"]
    assert not [k for k in fake_azure.resources if k.startswith(RG.lower())]
    assert fake_azure.get(deleted_apim_id("modelgate-apim-test")) is None
    assert steps[-1] == (100, "torn down")

    # Nothing left: a second teardown removes nothing and is no error.
    fake_azure.requests.clear()
    steps = Steps()
    azure_backend.teardown("modelgate-ws", steps)
    assert writes(fake_azure) == []
    assert any("not found; nothing to delete" in s for _, s in steps)
    # Another workspace's teardown touches nothing.
    azure_backend.teardown("someone-else", Steps())


def test_health_reads_the_resource_group_and_never_raises(
        azure_backend: Any, fake_azure: FakeAzure, azure_pipeline: Any) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    from app.backends.azure import AzureBackend

    before = azure_backend.health()
    assert before.healthy and "not provisioned yet" in before.detail
    fake_azure.put_resource(RG, {"location": "westeurope",
                                 "properties": {"provisioningState": "Succeeded"}})
    assert azure_backend.health().detail == "resource group modelgate-rg in westeurope"
    assert [r.method for r in fake_azure.requests] == ["GET", "GET"]

    class Refused:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")

    refused = AzureBackend.for_pipeline(
        azure_pipeline, credential=Refused(),
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    sick = refused.health()
    assert not sick.healthy and "AZURE_CLIENT_ID" in sick.detail
    fake_azure.fail("GET", "resourceGroups/modelgate-rg$", 503, "ServiceUnavailable",
                    "The service is unavailable.", times=20)
    down = azure_backend.health()
    assert not down.healthy and "503" in down.detail


def test_no_key_reaches_a_log_line_a_step_or_the_result(
        azure_backend: Any, fake_azure: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    steps = Steps()
    result = azure_backend.provision(spec(), steps)
    assert fake_azure.calls("POST", "listKeys"), "the upload used the account key"
    seen = "\n".join([r.getMessage() for r in caplog.records] + [s for _, s in steps]
                     + [repr(result)])
    assert STORAGE_KEY not in seen
    assert "fake-arm-token" not in seen
