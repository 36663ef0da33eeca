"""Fixtures for the azure backend's offline tests: a FakeAzure and a backend wired to it.

Every test here runs the SDKs' own code paths against tests/azure/fake_azure.py; no request
leaves the process (the fake fails a test on any request it has no answer for).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.ai.ml", reason="pip install -e '.[azure]' runs the azure tests")

from tests.azure.fake_azure import SUBSCRIPTION, TENANT, FakeAzure, FakeCredential  # noqa: E402

API_APP_ID = "6e9a3c1f-0b5d-4c8e-9f2a-7d1b3e5c9a70"


def azure_pipeline_settings(**azure: Any) -> dict[str, Any]:
    """The shipped pipeline file with the azure section filled in for the fake subscription."""
    from app.pipeline_config import DEFAULT_PATH, load_pipeline_config

    data = load_pipeline_config(DEFAULT_PATH).to_dict()
    data["workspace"]["name"] = "modelgate-ws"
    data["azure"].update({"subscription_id": SUBSCRIPTION, "tenant_id": TENANT,
                          "apim_name": "modelgate-apim-test", "apim_email": "ops@example.com",
                          "api_app_id": API_APP_ID,
                          "scoring_image": "modelgateacr.azurecr.io/modelgate-scoring:0.1.0",
                          **azure})
    return data


@pytest.fixture
def fake_azure() -> FakeAzure:
    return FakeAzure().install_areas()


@pytest.fixture
def azure_pipeline() -> Any:
    from app.pipeline_config import parse_pipeline_config

    return parse_pipeline_config(azure_pipeline_settings())


@pytest.fixture
def azure_backend(fake_azure: FakeAzure, azure_pipeline: Any, tmp_path: Path) -> Iterator[Any]:
    from app.backends.azure import AzureBackend

    backend = AzureBackend.for_pipeline(
        azure_pipeline, credential=FakeCredential(), home=tmp_path / "home",
        client_kwargs={"transport": fake_azure.transport(), "polling_interval": 0})
    yield backend
