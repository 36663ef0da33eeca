"""Schemathesis over the panel's own /api/v1/openapi.json, with a real bearer token: no 5xx.

Bounded: a few examples per operation (positive and negative data, so out-of-range integers
and wrong types are sent too) and a per-example deadline; the whole run takes well under a
minute. The panel runs through its WSGI app, on a real Redis and a real issuer's token.
"""

from __future__ import annotations

from typing import Any

import msal
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.identity_support import Issuer

EXAMPLES = 15  # per operation and mode


@pytest.fixture
def ci_token(issuer: Issuer) -> str:
    """A client-credentials token for modelgate-ci (MLOps.Engineer + Score.Invoke)."""
    client = msal.ConfidentialClientApplication(
        "modelgate-ci", client_credential=issuer.secret("modelgate-ci"),
        oidc_authority=issuer.url, http_client=issuer.session())
    token: str = client.acquire_token_for_client(["api://modelgate/.default"])["access_token"]
    issuer.remember(token)
    return token


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_no_operation_answers_5xx(oidc_app: Any, ci_token: str,
                                  mode: schemathesis.GenerationMode) -> None:
    # Schemathesis's own pytest plugin does not run under pytest 9; Hypothesis drives the
    # strategies it builds from the document instead.
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", oidc_app)
    auth = {"Authorization": f"Bearer {ci_token}"}
    server_errors: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()  # an invalid document fails here, naming the operation

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            response = case.call(headers=auth)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} "
                                     f"{case.query or ''} -> {response.status_code}")

        call()
    assert server_errors == []
