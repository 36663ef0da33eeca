"""``plan`` on Azure: offline with no network, credential or SDK; online with GETs only,
create / update (the changed properties) / no change per resource."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from app.backends.base import BackendError, PlanAction, ProvisionSpec
from app.pipeline_config import parse_pipeline_config
from tests.azure.conftest import azure_pipeline_settings
from tests.azure.fake_azure import FakeAzure, rg_id
from tests.azure.test_azure_provisioning import WS, Steps, spec
from tests.support import ROOT

CREATE, UPDATE, NO_CHANGE = PlanAction.CREATE, PlanAction.UPDATE, PlanAction.NO_CHANGE

# What the acceptance asks a plan to list, each by the kind a plan shows.
REQUIRED_KINDS = {"Azure ML workspace", "Data asset", "Compute cluster", "Virtual network",
                  "Subnet", "Network security group", "AKS cluster", "Cluster extension",
                  "Attached compute (Kubernetes)", "Online endpoint", "Online deployment",
                  "API Management service", "API", "API operation", "API policy",
                  "Named value"}


def by_name(plan: Any) -> dict[tuple[str, str], Any]:
    return {(item.kind, item.name): item for item in plan.items}


class NoCredential:
    """A credential that must never be asked for a token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("an offline plan asked for a token")


def test_an_offline_plan_lists_every_resource_with_no_request_and_no_token(
        fake_azure: FakeAzure, tmp_path: Any) -> None:
    from app.backends.azure import AzureBackend

    # The shipped file's azure section: no API Management name or e-mail yet.
    settings = azure_pipeline_settings(apim_name="", apim_email="")
    config = parse_pipeline_config(settings)
    backend = AzureBackend.for_pipeline(
        config, credential=NoCredential(), home=tmp_path,
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    plan = backend.plan(ProvisionSpec(config.workspace.name, config.environment_names,
                                      config.to_dict()), offline=True)
    assert fake_azure.requests == []
    assert plan.offline and plan.backend == "azure"
    assert {item.action for item in plan.items} == {CREATE}
    assert REQUIRED_KINDS <= {item.kind for item in plan.items}
    items = by_name(plan)
    for env, api, path in (("staging", "credit-risk-staging", "staging/credit-risk"),
                           ("prod", "credit-risk", "credit-risk")):
        assert ("Online endpoint", f"modelgate-ws-{env}") in items
        assert ("Online deployment", f"modelgate-ws-{env}/blue") in items
        assert items[("API", api)].note == f"path /{path}"
        assert ("API operation", f"{api}/score") in items
        assert ("API policy", f"{api}/policy") in items
        assert ("Named value", f"{env}-backend-key") in items
        assert ("Named value", f"{env}-backend-url") in items
    assert ("Named value", "issuer-url") in items
    assert ("Subnet", "aks (10.123.0.0/24)") in items and ("Subnet", "apim (10.123.1.0/24)") \
        in items
    apim = items[("API Management service", "(azure.apim_name not set)")]
    assert "azure.apim_name: must be set" in apim.note and "azure.apim_email" in apim.note
    assert plan.counts() == {"create": len(plan.items), "update": 0, "no change": 0}


def test_an_offline_plan_needs_no_azure_package_at_all() -> None:
    """Run where importing any azure package fails: the offline plan still lists it all."""
    script = textwrap.dedent("""
        import sys
        from importlib.abc import MetaPathFinder

        class NoAzure(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "azure" or name.startswith("azure."):
                    raise ModuleNotFoundError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, NoAzure())
        from app.backends.azure.context import AzureContext
        from app.backends.azure.planning import plan
        from app.backends.base import ProvisionSpec
        from app.pipeline_config import DEFAULT_PATH, load_pipeline_config

        config = load_pipeline_config(DEFAULT_PATH)
        ctx = AzureContext(config, "00000000-0000-0000-0000-00000000c0de")
        result = plan(ctx, ProvisionSpec(config.workspace.name), offline=True)
        assert not [m for m in sys.modules if m.startswith("azure")], "an azure import"

        # Online, and health, say what to install instead of failing with an ImportError.
        from app.backends.azure.provisioning import health
        from app.backends.base import BackendError
        from app.pipeline_config import parse_pipeline_config

        data = config.to_dict()
        data["azure"].update(tenant_id="11111111-2222-3333-4444-555555555555",
                             apim_name="modelgate-apim-test", apim_email="ops@example.com")
        ready = AzureContext(parse_pipeline_config(data), ctx.subscription_id,
                             _credential=object())
        try:
            plan(ready, ProvisionSpec(config.workspace.name))
        except BackendError as exc:
            assert "pip install 'modelgate[azure]'" in str(exc), exc
        else:
            raise AssertionError("an online plan without the packages")
        sick = health(ready)
        assert not sick.healthy and "pip install 'modelgate[azure]'" in sick.detail, sick
        print(len(result.items))
        print("|".join(sorted({i.kind for i in result.items if i.action.value == "create"})))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    count, kinds = done.stdout.splitlines()
    assert int(count) == 32 and REQUIRED_KINDS <= set(kinds.split("|"))


def test_an_online_plan_of_an_empty_subscription_reads_only_the_resource_group(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    plan = azure_backend.plan(spec())
    assert [(r.method, r.path) for r in fake_azure.requests] == [("GET", rg_id())]
    assert not plan.offline and {item.action for item in plan.items} == {CREATE}
    offline = azure_backend.plan(spec(), offline=True)
    # Both modes list the same resources (online knows the dataset's next version).
    assert [(i.kind, i.name.split("@")[0]) for i in plan.items] == \
        [(i.kind, i.name) for i in offline.items]
    assert by_name(plan)[("Data asset", "german-credit@1")].action == CREATE


def test_an_online_plan_after_provisioning_shows_no_change_and_what_a_new_file_changes(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    azure_backend.provision(spec(), Steps())
    written = {r.path.lower(): r.api_version for r in fake_azure.calls("PUT")
               if "management.azure" in r.url}
    fake_azure.requests.clear()

    plan = azure_backend.plan(spec(vnet_address_range="10.125.0.0/16",
                                   aks_subnet_range="10.125.0.0/24",
                                   apim_subnet_range="10.125.1.0/24", compute_max_nodes=3))
    assert {r.method for r in fake_azure.requests} == {"GET"}, "a plan changes nothing"
    # Each resource is read with the api-version provisioning wrote it with.
    read = {r.path.lower(): r.api_version for r in fake_azure.requests}
    for path, version in written.items():
        if path in read:
            assert read[path] == version, path
    assert len(set(read) & set(written)) >= 13

    items = by_name(plan)
    assert items[("Virtual network", "modelgate-vnet")].changes == (
        "address_prefixes: ['10.123.0.0/16'] -> ['10.125.0.0/16']",)
    assert items[("Subnet", "aks (10.125.0.0/24)")].changes == (
        "subnets.aks.address_prefix: '10.123.0.0/24' -> '10.125.0.0/24'",)
    assert items[("Subnet", "apim (10.125.1.0/24)")].action == UPDATE
    assert items[("Compute cluster", "cpu-cluster")].changes == ("max_nodes: 2 -> 3",)
    unchanged = {kind for (kind, _), item in items.items() if item.action == NO_CHANGE}
    assert unchanged == {"Resource group", "Network security group", "AKS cluster",
                         "Role assignment", "Cluster extension", "Log Analytics workspace",
                         "Application Insights", "Storage account", "Key vault",
                         "Azure ML workspace", "Data asset", "Attached compute (Kubernetes)",
                         "API Management service"}
    assert items[("Data asset", "german-credit@1")].note.endswith("registered")
    # Nothing deployed or published yet.
    assert {item.action for item in plan.items if item.kind in
            ("Online endpoint", "Online deployment", "API", "Named value")} == {CREATE}


def test_an_online_plan_reads_endpoints_apis_and_named_values(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    azure_backend.provision(spec(), Steps())
    endpoint = f"{WS}/onlineEndpoints/modelgate-ws-staging"
    fake_azure.put_resource(endpoint, {"location": "westeurope", "properties": {
        "authMode": "Key", "traffic": {"blue": 100, "green": 0},
        "compute": f"{WS}/computes/aks-modelgate", "provisioningState": "Succeeded"}})
    fake_azure.put_resource(f"{endpoint}/deployments/blue", {"properties": {
        "endpointComputeType": "Kubernetes", "provisioningState": "Succeeded"}})
    # An API published earlier at another path, as the SDK writes it.
    from azure.mgmt.apimanagement.models import (
        ApiCreateOrUpdateParameter,
        NamedValueCreateContract,
        OperationContract,
        PolicyContract,
    )

    apim = azure_backend.ctx.client("apim")
    rg, svc, api = "modelgate-rg", "modelgate-apim-test", "credit-risk-staging"
    apim.api.begin_create_or_update(rg, svc, api, ApiCreateOrUpdateParameter(
        display_name=api, path="old-staging", protocols=["https"],
        subscription_required=False)).result()
    apim.api_operation.create_or_update(rg, svc, api, "score", OperationContract(
        display_name="score", method="POST", url_template="/score"))
    apim.api_policy.create_or_update(rg, svc, api, "policy", PolicyContract(
        value="<policies><inbound><base /></inbound><backend><base /></backend><outbound>"
              "<base /></outbound><on-error><base /></on-error></policies>",
        format="rawxml"), if_match="*")
    for name, secret in (("staging-backend-key", False), ("issuer-url", False)):
        apim.named_value.begin_create_or_update(rg, svc, name, NamedValueCreateContract(
            display_name=name, value="https://login.example/v2.0", secret=secret)).result()
    fake_azure.requests.clear()

    items = by_name(azure_backend.plan(spec()))
    assert items[("Online endpoint", "modelgate-ws-staging")].action == NO_CHANGE
    # blue takes the traffic: the next deploy creates green beside it.
    assert items[("Online deployment", "modelgate-ws-staging/green")].action == CREATE
    assert items[("API", "credit-risk-staging")].changes == (
        "path: 'old-staging' -> 'staging/credit-risk'",)
    assert items[("API operation", "credit-risk-staging/score")].action == NO_CHANGE
    assert items[("API policy", "credit-risk-staging/policy")].action == NO_CHANGE
    assert items[("Named value", "staging-backend-key")].changes == ("secret: False -> True",)
    assert items[("Named value", "staging-backend-url")].action == CREATE
    assert items[("Named value", "issuer-url")].action == NO_CHANGE
    assert items[("Online endpoint", "modelgate-ws-prod")].action == CREATE
    assert items[("API", "credit-risk")].action == CREATE
    (policy_read,) = fake_azure.calls("GET", "policies/policy$")
    assert policy_read.query["format"] == "rawxml"
    assert {r.method for r in fake_azure.requests} == {"GET"}


def test_an_online_plan_refuses_bad_settings_and_a_refused_sign_in(
        azure_backend: Any, fake_azure: FakeAzure, azure_pipeline: Any) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    from app.backends.azure import AzureBackend

    unnamed = parse_pipeline_config(azure_pipeline_settings(apim_name=""))
    blank = AzureBackend.for_pipeline(
        unnamed, credential=NoCredential(),
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    with pytest.raises(BackendError, match="azure.apim_name: must be set"):
        blank.plan(ProvisionSpec(unnamed.workspace.name, settings=unnamed.to_dict()))
    assert fake_azure.requests == []

    class Refused:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise ClientAuthenticationError("AADSTS700016: Application not found.")

    refused = AzureBackend.for_pipeline(
        azure_pipeline, credential=Refused(),
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    with pytest.raises(BackendError, match="planning: reading Resource group.*AZURE_CLIENT_ID"):
        refused.plan(spec())
    # offline still works with that credential
    assert refused.plan(spec(), offline=True).offline


def test_a_plan_never_imports_azure_ml_so_the_panel_can_plan() -> None:
    """The panel process must not pay for azure.ai.ml: an online plan (against the fake)
    and health run without importing it."""
    script = textwrap.dedent("""
        import sys
        from tests.azure import fakes_provisioning
        from tests.azure.fake_azure import SUBSCRIPTION, TENANT, FakeAzure, FakeCredential
        from app.backends.azure import AzureBackend
        from app.backends.base import ProvisionSpec
        from app.pipeline_config import DEFAULT_PATH, load_pipeline_config, parse_pipeline_config

        fake = FakeAzure()
        fakes_provisioning.install(fake)
        fake.put_resource(f"/subscriptions/{SUBSCRIPTION}/resourceGroups/modelgate-rg",
                          {"location": "westeurope", "properties": {}})
        data = load_pipeline_config(DEFAULT_PATH).to_dict()
        data["azure"].update(subscription_id=SUBSCRIPTION, tenant_id=TENANT,
                             apim_name="modelgate-apim-test", apim_email="ops@example.com")
        config = parse_pipeline_config(data)
        backend = AzureBackend.for_pipeline(config, credential=FakeCredential(),
            client_kwargs={"transport": fake.transport(), "polling_interval": 0})
        plan = backend.plan(ProvisionSpec(config.workspace.name, settings=config.to_dict()))
        assert backend.health().healthy
        assert "azure.ai.ml" not in sys.modules, "azure.ai.ml was imported"
        print(plan.counts()["create"], len(fake.requests))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    creates, requests = map(int, done.stdout.split())
    assert creates == 31 and requests > 3


def test_modelgate_plan_offline_on_azure_exits_0_listing_every_resource(tmp_path: Any) -> None:
    """The issue's acceptance: the shipped pipeline file, no subscription, no credential."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "plan", "--offline", "--json"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
             "MODELGATE_HOME": str(tmp_path / "home"), "MODELGATE_BACKEND": "azure"})
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    plan = json.loads(done.stdout)
    assert plan["backend"] == "azure" and plan["offline"] is True
    assert REQUIRED_KINDS <= {item["kind"] for item in plan["items"]}
    assert plan["counts"] == {"create": len(plan["items"]), "update": 0, "no change": 0}
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())
