"""The azure backend's shared parts on the SDKs' own code paths: error translation, long
operations that resume from their continuation token, the credential hint."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from app.backends.azure.context import LongOperation, azure_errors, run_long_operation
from app.backends.base import (
    BackendError,
    MemoryOperationStore,
    ResourceConflict,
    ResourceNotFound,
    TransientBackendError,
)
from tests.azure.fake_azure import Answer, FakeAzure, Recorded, rg_id


def _vnet_body() -> Any:
    from azure.mgmt.network.models import AddressSpace, VirtualNetwork

    return VirtualNetwork(location="westeurope",
                          address_space=AddressSpace(address_prefixes=["10.123.0.0/16"]))


def test_not_found_conflict_and_throttling_become_backend_errors(azure_backend: Any,
                                                                 fake_azure: FakeAzure) -> None:
    network = azure_backend.ctx.client("network")
    with pytest.raises(ResourceNotFound, match="reading the VNET: not found"):
        with azure_errors("reading the VNET"):
            network.virtual_networks.get("modelgate-rg", "missing")
    fake_azure.fail("PUT", "virtualNetworks/busy$", 409, "AnotherOperationInProgress",
                    "Another operation on this or dependent resource is in progress.")
    with pytest.raises(ResourceConflict, match="AnotherOperationInProgress"):
        with azure_errors("creating the VNET"):
            network.virtual_networks.begin_create_or_update("modelgate-rg", "busy",
                                                            _vnet_body()).result()
    # 429 with Retry-After is retried by the SDK (waiting what Azure asked for) ...
    fake_azure.put_resource(f"{rg_id()}/providers/Microsoft.Network/virtualNetworks/busy",
                            {"location": "westeurope", "properties": {}})
    fake_azure.fail("GET", "virtualNetworks/busy$", 429, "TooManyRequests", "slow down",
                    headers={"Retry-After": "7"})
    with azure_errors("reading the VNET"):
        network.virtual_networks.get("modelgate-rg", "busy")
    assert 7.0 in fake_azure.sleeps
    # ... and when Azure keeps throttling past the SDK's retries, the job retries later.
    fake_azure.fail("GET", "virtualNetworks/busy$", 429, "TooManyRequests", "slow down",
                    headers={"Retry-After": "1"}, times=20)
    with pytest.raises(TransientBackendError, match="429"):
        with azure_errors("reading the VNET"):
            network.virtual_networks.get("modelgate-rg", "busy")


def test_quota_and_taken_names_say_what_to_do(azure_backend: Any, fake_azure: FakeAzure) -> None:
    network = azure_backend.ctx.client("network")
    fake_azure.fail("PUT", "virtualNetworks/q$", 400, "QuotaExceeded",
                    "Operation results in exceeding quota limits of Core.")
    with pytest.raises(BackendError, match="quota is exhausted.*exceeding quota limits"):
        with azure_errors("creating the VNET"):
            network.virtual_networks.begin_create_or_update("modelgate-rg", "q",
                                                            _vnet_body()).result()


def test_a_provisioning_failure_carries_the_resources_own_message(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    fake_azure.fail_provisioning("virtualNetworks/bad$", "InvalidAddressPrefix",
                                 "Subnet 'aks' is not valid in virtual network 'bad'.")
    network = azure_backend.ctx.client("network")
    op = LongOperation("vnet:bad", "creating the VNET", lambda token: (
        network.virtual_networks.begin_create_or_update("modelgate-rg", "bad", _vnet_body(),
                                                        continuation_token=token)))
    with pytest.raises(BackendError, match="Subnet 'aks' is not valid"):
        run_long_operation(op, MemoryOperationStore(), lambda p, s: None, 10)


class _Killed(Exception):
    """The worker died while waiting (raised by the progress callback)."""


def test_a_killed_wait_resumes_from_the_stored_token_with_gets_only(
        azure_backend: Any, fake_azure: FakeAzure) -> None:
    fake_azure.lro_polls = 10**9  # API Management's 30-75 minutes
    network = azure_backend.ctx.client("network")
    store = MemoryOperationStore()
    # The SDK polls in a background thread: hold the operation's status answers until the
    # worker has died, so that it dies while the wait is under way (not after it finished).
    released = threading.Event()

    def held_status(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        released.wait(timeout=30)
        return fake._operation_status(request.path)

    fake_azure.route("GET", r"/providers/Fake\.Operations/operations/")(held_status)

    def begin(token: str | None) -> Any:
        return network.virtual_networks.begin_create_or_update(
            "modelgate-rg", "slow", _vnet_body(), continuation_token=token)

    op = LongOperation("vnet:slow", "creating the VNET", begin)

    def dies(percent: int, step: str) -> None:
        if "min)" in step:
            raise _Killed()

    with pytest.raises(_Killed):
        run_long_operation(op, store, dies, 10, poll_seconds=0)
    released.set()
    assert store.get("vnet:slow"), "the token is stored before the first wait"
    fake_azure.finish_operations()
    puts_before = len(fake_azure.calls("PUT"))
    steps: list[str] = []
    result = run_long_operation(op, store, lambda p, s: steps.append(s), 10, poll_seconds=0)
    assert result.name == "slow"
    assert len(fake_azure.calls("PUT")) == puts_before, "the retry sent no second PUT"
    assert steps[0].endswith("resuming the operation already under way")
    assert store.get("vnet:slow") is None, "a finished operation's token is forgotten"


def test_a_failed_sign_in_names_what_to_set(fake_azure: FakeAzure, azure_pipeline: Any) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    from app.backends.azure import AzureBackend

    class Refused:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")

    backend = AzureBackend.for_pipeline(
        azure_pipeline, credential=Refused(),
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    with pytest.raises(BackendError, match="AZURE_CLIENT_ID") as caught:
        with azure_errors("reading the VNET"):
            backend.ctx.client("network").virtual_networks.get("modelgate-rg", "x")
    assert "Azure sign-in failed" in str(caught.value)
    assert fake_azure.requests == [], "nothing reached Azure without a token"


def test_no_subscription_is_a_setup_error_when_azure_is_called(azure_pipeline: Any) -> None:
    import dataclasses

    from app.backends.azure.context import AzureContext, AzureSetupError

    blank = dataclasses.replace(azure_pipeline,
                                azure=dataclasses.replace(azure_pipeline.azure,
                                                          subscription_id=""))
    ctx = AzureContext.build(blank, credential=object(), env={})  # an offline plan needs none
    with pytest.raises(AzureSetupError, match="azure.subscription_id.*AZURE_SUBSCRIPTION_ID"):
        ctx.client("network")


def test_azure_ml_sdk_errors_become_backend_errors(azure_backend: Any) -> None:
    from azure.ai.ml.entities import Data

    ml = azure_backend.ctx.client("ml")
    # The SDK looks for the latest version itself and raises its own "does not exist" error.
    with pytest.raises(ResourceNotFound, match=r"reading dataset nowhere: not found \(.*"
                                               r"does not exist"):
        with azure_errors("reading dataset nowhere"):
            ml.data.get("nowhere", label="latest")
    # Client-side validation, before any request: the SDK's own message, first line only.
    with pytest.raises(BackendError, match=r"^registering data bad: ") as caught:
        with azure_errors("registering data bad"):
            ml.data.create_or_update(Data(name="bad", version="1", path="/no/such/file.csv"))
    assert "\n" not in str(caught.value)
    assert not isinstance(caught.value, ResourceNotFound)


def test_translating_errors_never_imports_azure_ml() -> None:
    # The panel translates errors too; azure.ai.ml costs seconds to import and stays out of it.
    import subprocess
    import sys

    code = ("import sys\n"
            "from app.backends.azure.context import translate\n"
            "from azure.core.exceptions import AzureError\n"
            "print(type(translate('x', AzureError('boom'))).__name__, "
            "type(translate('x', ValueError('boom'))).__name__, 'azure.ai.ml' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["BackendError", "BackendError", "False"]
