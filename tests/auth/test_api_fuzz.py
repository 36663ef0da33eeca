"""Schemathesis over the panel's own /api/v1/openapi.json, with a real bearer token: no 5xx.

Schemathesis's engine runs as its command line does: the examples phase, the coverage phase
(boundary values of every parameter: an integer's maximum and one past it, wrong types,
missing parameters) and the fuzzing phase (positive and negative data), with only the
not_a_server_error check. Bounded: a few examples per operation, no stateful phase; the whole
run takes well under a minute. The panel runs through its WSGI app on a real Redis, and the
token comes from a real issuer.
"""

from __future__ import annotations

from typing import Any

import msal
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from tests.identity_support import Issuer

EXAMPLES = 15  # per operation, in the fuzzing phase


@pytest.fixture
def ci_token(issuer: Issuer) -> str:
    """A client-credentials token for modelgate-ci (MLOps.Engineer + Score.Invoke)."""
    client = msal.ConfidentialClientApplication(
        "modelgate-ci", client_credential=issuer.secret("modelgate-ci"),
        oidc_authority=issuer.url, http_client=issuer.session())
    token: str = client.acquire_token_for_client(["api://modelgate/.default"])["access_token"]
    issuer.remember(token)
    return token


def test_no_operation_answers_5xx(oidc_app: Any, ci_token: str) -> None:
    config = SchemathesisConfig.from_dict({
        "headers": {"Authorization": f"Bearer {ci_token}"},
        "generation": {"max-examples": EXAMPLES, "mode": "all", "deterministic": True,
                       "database": "none", "with-security-parameters": False},
        "checks": {"enabled": False, "not_a_server_error": {"enabled": True}},
        "phases": {"stateful": {"enabled": False}},
    })
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", oidc_app, config=config)
    server_errors: set[str] = set()
    problems: list[str] = []
    operations = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            operations.add(recorder.label)
            for case_id, checks in recorder.checks.items():
                if any(check.status.name == "FAILURE" for check in checks):
                    case = recorder.cases[case_id].value
                    server_errors.add(f"{case.method} {case.formatted_path} "
                                      f"query={case.query}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            problems.append(str(event.info.message if hasattr(event, "info") else event))
    assert problems == [], problems  # an invalid document or a crash in the run itself
    assert len(operations) >= 10, operations
    assert sorted(server_errors) == []


def test_every_integer_parameter_declares_its_bounds(oidc_app: Any) -> None:
    """So the coverage phase above sends each bound and one past it (2^31 reached SQL: 500)."""
    from app.params import SQL_INT_MAX

    document = oidc_app.test_client().get("/api/v1/openapi.json").get_json()
    unbounded = [f"{method.upper()} {path} {param['name']}"
                 for path, item in document["paths"].items()
                 for method, operation in item.items()
                 for param in operation.get("parameters", [])
                 if param["schema"].get("type") == "integer"
                 and not (param["schema"].get("minimum") is not None
                          and param["schema"].get("maximum", SQL_INT_MAX + 1) <= SQL_INT_MAX)]
    assert unbounded == []
