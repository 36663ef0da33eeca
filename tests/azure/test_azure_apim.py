"""Publishing through API Management on the SDK's own code paths (tests/azure/fakes_apim.py):
the API created or updated (never deleted), revisions and releases, the policy as rawxml
byte-identical to the local gateway's, secret and Key Vault-backed named values, the local
gateway's checks before anything is sent, and request reports as traffic figures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from app.backends.azure import apim
from app.backends.base import (
    ApiOperation,
    ApiSpec,
    BackendError,
    PolicyRefused,
    ResourceNotFound,
)
from app.gateway.template import ISSUER_URL_NAME
from app.services.apis import identity_rules, issuer_settings, render_policy
from tests.azure.conftest import API_APP_ID
from tests.azure.fake_azure import SUBSCRIPTION, TENANT, FakeAzure, Recorded
from tests.azure.fakes_apim import (
    gateway_view,
    named_value,
    report_call,
    seed_service,
    state,
    validation_error,
)

API = "credit-risk-staging"
SERVICE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/modelgate-rg/providers/"
           "Microsoft.ApiManagement/service/modelgate-apim-test")
SCORING_URI = "http://10.123.0.50/api/v1/endpoint/modelgate-ws-staging/score"
BACKEND = SCORING_URI.removesuffix("/score")
KEY = "endpoint-key-Zq8sX0uV2wY4aC6eG8iK0mO2qS4uW6yA8cE0gI2kM4o"
ENTRA = {"IDENTITY": "entra", "TENANT_ID": TENANT, "API_CLIENT_ID": API_APP_ID}
V2_ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
VAULT = "https://modelgate-kv.vault.azure.net"
JWT = ('<validate-jwt header-name="Authorization" require-scheme="Bearer">'
       '<openid-config url="{{issuer-url}}/.well-known/openid-configuration" />'
       f"<audiences><audience>api://{API_APP_ID}</audience></audiences>"
       "<issuers><issuer>{{issuer-url}}</issuer></issuers><required-claims>"
       '<claim name="roles" match="any"><value>Score.Invoke</value></claim>'
       "</required-claims></validate-jwt>")


def spec(revision: int = 1, policy: str | None = None, **changes: Any) -> ApiSpec:
    """The staging API as the publish service hands it to a backend with identity=entra."""
    base = ApiSpec(
        name=API, path="staging/credit-risk", environment="staging", revision=revision,
        policy_xml=policy if policy is not None else render_policy(ENTRA, "staging", 6000),
        rules={"anonymous": False, "allowed_backends": [], **identity_rules(ENTRA)},
        named_values={ISSUER_URL_NAME: issuer_settings(ENTRA).issuer})
    return dataclasses.replace(base, **changes)


def policy_with(inbound: str) -> str:
    return (f"<policies><inbound><base />{JWT}{inbound}"
            '<set-backend-service base-url="{{staging-backend-url}}" />'
            '<set-header name="Authorization" exists-action="override">'
            "<value>Bearer {{staging-backend-key}}</value></set-header></inbound>"
            "<backend><base /></backend></policies>")


@pytest.fixture
def ctx(azure_backend: Any, fake_azure: FakeAzure) -> Any:
    """The backend's context with API Management provisioned."""
    seed_service(fake_azure)
    return azure_backend.ctx


@pytest.fixture
def deployed(ctx: Any) -> Any:
    """A deploy pointed API Management at the staging endpoint."""
    apim.set_backend(ctx, "staging", SCORING_URI, KEY)
    return ctx


def path(request: Recorded) -> str:
    """The request's path below the service, decoded (``apis/x;rev=2``)."""
    return unquote(request.path).split("/service/modelgate-apim-test/", 1)[-1]


def writes(fake: FakeAzure, since: int = 0) -> list[tuple[str, str]]:
    """(method, path) of every request that changes something (listValue only reads)."""
    return [(r.method, path(r)) for r in fake.requests[since:]
            if r.method in ("PUT", "PATCH", "DELETE", "POST")
            and not r.path.endswith("/listValue")]


# --------------------------------------------------------------------------- publishing


def test_a_first_publish_creates_the_api_its_operation_and_policy(
        deployed: Any, fake_azure: FakeAzure) -> None:
    start = len(fake_azure.requests)
    info = apim.publish_revision(deployed, spec())
    assert (info.name, info.revision, info.path, info.is_current) == (
        API, 1, "staging/credit-risk", True)  # a new API is live at its first revision
    assert writes(fake_azure, start) == [
        ("PUT", "namedValues/issuer-url"), ("PUT", f"apis/{API}"),
        ("PUT", f"apis/{API};rev=1/operations/score"), ("PUT", f"apis/{API};rev=1/policies/policy")]
    sent = fake_azure.requests[start:]
    assert {r.api_version for r in sent} == {"2024-05-01"}
    created = next(r for r in sent if r.method == "PUT" and path(r) == f"apis/{API}")
    assert created.body["properties"] == {
        "displayName": API, "path": "staging/credit-risk", "protocols": ["https"],
        "subscriptionRequired": False, "apiRevision": "1",
        "apiRevisionDescription": "modelgate: revision 1 of the staging API"}
    operation = next(r for r in sent if path(r).endswith("/operations/score"))
    assert operation.body["properties"] == {"displayName": "score", "method": "POST",
                                            "urlTemplate": "/score"}
    issuer = next(r for r in sent if path(r) == "namedValues/issuer-url" and r.method == "PUT")
    assert issuer.body["properties"] == {"displayName": "issuer-url", "value": V2_ISSUER,
                                         "secret": False}
    # the named value's operation finished through its Location (asyncId), as APIM answers
    assert any(r.method == "GET" and path(r) == "namedValues/issuer-url"
               and "asyncId" in r.query for r in sent)
    api = state(fake_azure).apis[API]
    assert api.current == 1 and api.revisions[1].operations["score"]["urlTemplate"] == "/score"


def test_the_policy_sent_is_byte_identical_to_what_the_local_gateway_runs(
        deployed: Any, fake_azure: FakeAzure, tmp_path: Path) -> None:
    from app.backends.local import LocalBackend
    from app.backends.local import gateway as local_gateway

    home = tmp_path / "local"
    local_gateway.set_backend(home, "staging", BACKEND, KEY)
    local = LocalBackend(home)
    for revision, policy in ((1, None), (2, policy_with("<!-- kept as written -->\n"))):
        api_spec = spec(revision, policy)
        local.publish_revision(api_spec)
        apim.publish_revision(deployed, api_spec)
        stored = local_gateway.load_revision(home, API, revision)
        assert stored is not None
        sent = [r for r in fake_azure.calls("PUT", "/policies/policy$")
                if path(r) == f"apis/{API};rev={revision}/policies/policy"][-1]
        assert sent.headers["if-match"] == "*"
        assert sent.body["properties"]["format"] == "rawxml"
        assert sent.body["properties"]["value"].encode("utf-8") == \
            stored["policy_xml"].encode("utf-8") == api_spec.policy_xml.encode("utf-8")
    # the default policy for Entra: both audience forms, the v2 issuer by name
    first = state(fake_azure).apis[API].revisions[1].policy
    assert first is not None and f"<audience>api://{API_APP_ID}</audience>" in first
    assert f"<audience>{API_APP_ID}</audience>" in first and "{{issuer-url}}" in first
    assert named_value(fake_azure, "issuer-url") == V2_ISSUER


@pytest.mark.parametrize(("inbound", "named"), [
    ('<send-request mode="new" response-variable-name="r" />', "<send-request>"),
    ('<set-backend-service base-url="https://attacker.example" />',
     "gateway.allowed_backends"),
    ('<return-response><set-body>' + KEY + "</set-body></return-response>",
     "staging-backend-key"),
])
def test_the_local_gateways_checks_refuse_before_anything_is_written(
        deployed: Any, fake_azure: FakeAzure, tmp_path: Path, inbound: str,
        named: str) -> None:
    from app.backends.local import LocalBackend
    from app.backends.local import gateway as local_gateway

    bad = spec(1, policy_with(inbound))
    start = len(fake_azure.requests)
    with pytest.raises(PolicyRefused, match="api 'credit-risk-staging' revision 1") as azure:
        apim.publish_revision(deployed, bad)
    assert named in str(azure.value) and KEY not in str(azure.value)
    assert writes(fake_azure, start) == [], "nothing reaches API Management"
    home = tmp_path / "local"
    local_gateway.set_backend(home, "staging", BACKEND, KEY)
    with pytest.raises(PolicyRefused) as local:
        LocalBackend(home).publish_revision(bad)
    assert str(azure.value) == str(local.value), "the same checks, the same words"


def test_api_managements_validation_error_becomes_policy_refused(
        deployed: Any, fake_azure: FakeAzure) -> None:
    answer = validation_error("representation", "Error in element 'rate-limit-by-key' on "
                                                "line 33, column 6: Policy is not allowed in "
                                                "this SKU")
    fake_azure.fail("PUT", "/policies/policy$", 400, body=answer.body)
    with pytest.raises(PolicyRefused, match="rate-limit-by-key.*not allowed in this SKU") as e:
        apim.publish_revision(deployed, spec())
    assert "One or more fields contain incorrect values" in str(e.value)
    # once APIM accepts it, publishing the same revision again goes through
    assert apim.publish_revision(deployed, spec()).revision == 1
    assert state(fake_azure).apis[API].revisions[1].policy == spec().policy_xml


def test_a_new_revision_is_created_from_the_current_one_then_released(
        deployed: Any, fake_azure: FakeAzure) -> None:
    apim.publish_revision(deployed, spec(1))
    apim.make_revision_current(deployed, API, 1)
    start = len(fake_azure.requests)
    second = policy_with("")
    info = apim.publish_revision(deployed, spec(2, second))
    assert (info.revision, info.is_current) == (2, False)
    created = next(r for r in fake_azure.requests[start:]
                   if r.method == "PUT" and path(r) == f"apis/{API};rev=2")
    assert created.body["properties"]["sourceApiId"] == f"{SERVICE}/apis/{API}"
    assert created.body["properties"]["apiRevisionDescription"] == \
        "modelgate: revision 2 of the staging API"
    assert "if-match" not in created.headers
    api = state(fake_azure).apis[API]
    assert api.current == 1 and api.revisions[2].policy == second
    assert api.revisions[1].policy == spec(1).policy_xml, "the current revision is untouched"

    current = apim.make_revision_current(deployed, API, 2)
    assert (current.revision, current.is_current, current.path) == (2, True, "staging/credit-risk")
    release = fake_azure.calls("PUT", "/releases/")[-1]
    assert release.body["properties"]["apiId"] == f"/apis/{API};rev=2"
    assert api.current == 2
    # rollback: release the earlier revision
    apim.make_revision_current(deployed, API, 1)
    assert fake_azure.calls("PUT", "/releases/")[-1].body["properties"]["apiId"] == \
        f"/apis/{API};rev=1"
    assert api.current == 1 and len(api.releases) == 2
    assert fake_azure.calls("DELETE") == []


def test_publishing_again_updates_in_place_and_releasing_again_is_a_no_op(
        deployed: Any, fake_azure: FakeAzure) -> None:
    apim.publish_revision(deployed, spec(1))
    apim.make_revision_current(deployed, API, 1)
    apim.publish_revision(deployed, spec(2))
    start = len(fake_azure.requests)
    again = apim.publish_revision(deployed, spec(2))
    assert again.revision == 2 and not again.is_current
    assert writes(fake_azure, start) == [
        ("PUT", f"apis/{API};rev=2"), ("PUT", f"apis/{API};rev=2/operations/score"),
        ("PUT", f"apis/{API};rev=2/policies/policy")], "named values unchanged: not re-sent"
    update = next(r for r in fake_azure.requests[start:] if r.method == "PUT")
    assert update.headers["if-match"] == "*" and "sourceApiId" not in update.body["properties"]
    apim.make_revision_current(deployed, API, 2)
    released = len(fake_azure.calls("PUT", "/releases/"))
    assert apim.make_revision_current(deployed, API, 2).is_current
    assert len(fake_azure.calls("PUT", "/releases/")) == released
    assert sorted(state(fake_azure).apis[API].revisions) == [1, 2]


def test_an_existing_api_is_updated_never_deleted_and_recreated(
        deployed: Any, fake_azure: FakeAzure) -> None:
    """The seed deleted and recreated its API to force subscriptionRequired=false."""
    from app.backends.azure.context import azure_errors

    client = deployed.client("apim")
    from azure.mgmt.apimanagement.models import ApiCreateOrUpdateParameter

    with azure_errors("seeding"):
        client.api.begin_create_or_update(
            "modelgate-rg", "modelgate-apim-test", API, ApiCreateOrUpdateParameter(
                display_name="old", path="staging/credit-risk", protocols=["http", "https"],
                subscription_required=True)).result()
    info = apim.publish_revision(deployed, spec(4))
    assert not info.is_current
    apim.make_revision_current(deployed, API, 4)
    api = state(fake_azure).apis[API]
    assert api.current == 4 and api.revisions[4].properties["subscriptionRequired"] is False
    assert api.revisions[4].properties["protocols"] == ["https"]
    assert not [r for r in fake_azure.requests if r.method == "DELETE"]


def test_operations_are_exactly_the_specs(deployed: Any, fake_azure: FakeAzure) -> None:
    health = ApiOperation("health", "GET", "/health")
    apim.publish_revision(deployed, spec(1, operations=(spec().operations[0], health)))
    assert set(state(fake_azure).apis[API].revisions[1].operations) == {"score", "health"}
    apim.publish_revision(deployed, spec(1))
    assert set(state(fake_azure).apis[API].revisions[1].operations) == {"score"}
    removed = fake_azure.calls("DELETE", "/operations/health$")
    assert len(removed) == 1 and removed[0].headers["if-match"] == "*"


# --------------------------------------------------------------------------- backends and keys


def test_nothing_is_published_or_released_without_a_backend(
        ctx: Any, fake_azure: FakeAzure) -> None:
    with pytest.raises(ResourceNotFound, match="no backend for staging"):
        apim.publish_revision(ctx, spec())
    assert writes(fake_azure) == []
    apim.set_backend(ctx, "staging", SCORING_URI, KEY)
    with pytest.raises(ResourceNotFound, match="revision 1 was not published"):
        apim.make_revision_current(ctx, API, 1)
    apim.publish_revision(ctx, spec(1))
    apim.publish_revision(ctx, spec(2))
    del state(fake_azure).named_values["staging-backend-url"]
    with pytest.raises(ResourceNotFound, match="no backend for staging"):
        apim.make_revision_current(ctx, API, 2)
    assert state(fake_azure).apis[API].current == 1


def test_the_backend_url_and_key_are_named_values_the_key_secret(
        ctx: Any, fake_azure: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    apim.set_backend(ctx, "staging", SCORING_URI, KEY)
    url = fake_azure.calls("PUT", "/namedValues/staging-backend-url$")[-1]
    assert url.body["properties"] == {"displayName": "staging-backend-url", "value": BACKEND,
                                      "secret": False}
    key = fake_azure.calls("PUT", "/namedValues/staging-backend-key$")[-1]
    assert key.body["properties"] == {"displayName": "staging-backend-key", "value": KEY,
                                      "secret": True}
    assert gateway_view(fake_azure, "staging") == (BACKEND, KEY)
    # API Management never shows a secret's value when read
    listed = deployed_listing(ctx)
    assert listed["staging-backend-key"].value is None and listed["staging-backend-key"].secret
    fresh = KEY[::-1]
    apim.gateway_use_key(ctx, "staging", fresh)
    assert gateway_view(fake_azure, "staging") == (BACKEND, fresh)
    puts = len(fake_azure.calls("PUT", "/namedValues/"))
    apim.gateway_use_key(ctx, "staging", fresh)  # already presented: nothing written
    apim.set_backend(ctx, "staging", SCORING_URI, fresh)
    assert len(fake_azure.calls("PUT", "/namedValues/")) == puts
    assert KEY not in caplog.text and fresh not in caplog.text


def deployed_listing(ctx: Any) -> dict[str, Any]:
    return {nv.name: nv for nv in ctx.client("apim").named_value.list_by_service(
        "modelgate-rg", "modelgate-apim-test")}


def test_a_refused_key_change_names_the_value_never_the_key(
        ctx: Any, fake_azure: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answer = validation_error("value", "Value exceeds the maximum length.")
    fake_azure.fail("PUT", "/namedValues/staging-backend-key$", 400, body=answer.body)
    with pytest.raises(BackendError, match="staging-backend-key") as caught:
        apim.gateway_use_key(ctx, "staging", KEY)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)
    assert KEY not in caplog.text


def test_with_key_vault_the_named_value_references_a_secret_the_worker_writes(
        fake_azure: FakeAzure, azure_backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seed_service(fake_azure)
    ctx = azure_backend.ctx
    ctx.config = dataclasses.replace(
        ctx.config, azure=dataclasses.replace(ctx.config.azure, key_vault_uri=VAULT + "/"))
    apim.gateway_use_key(ctx, "staging", KEY)
    secret = fake_azure.calls("PUT", "/secrets/staging-backend-key$")[-1]
    assert secret.url.startswith(f"{VAULT}/secrets/staging-backend-key?")
    assert secret.api_version == "7.5" and secret.body["value"] == KEY
    assert secret.headers["authorization"] == "Bearer fake-arm-token"
    assert ("https://vault.azure.net/.default",) in ctx.credential.scopes
    reference = fake_azure.calls("PUT", "/namedValues/staging-backend-key$")[-1]
    assert reference.body["properties"] == {
        "displayName": "staging-backend-key", "secret": True,
        "keyVault": {"secretIdentifier": f"{VAULT}/secrets/staging-backend-key"}}
    assert named_value(fake_azure, "staging-backend-key") == KEY
    # a rotation: a new secret version, and the named value refreshed now (not in 4 hours)
    fresh = KEY[::-1]
    before = len(fake_azure.calls("PUT", "/namedValues/"))
    apim.gateway_use_key(ctx, "staging", fresh)
    assert len(fake_azure.calls("PUT", "/namedValues/")) == before
    assert len(fake_azure.calls("POST", "/namedValues/staging-backend-key/refreshSecret$")) == 1
    assert named_value(fake_azure, "staging-backend-key") == fresh
    assert KEY not in caplog.text and fresh not in caplog.text


# --------------------------------------------------------------------------- traffic


def test_traffic_maps_request_reports_to_calls(ctx: Any, fake_azure: FakeAzure) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    report_call(fake_azure, "credit-risk", 200, 41.5, now - dt.timedelta(seconds=5))
    report_call(fake_azure, API, 502, 1003.25, now - dt.timedelta(seconds=30))
    report_call(fake_azure, API, 200, 12.0, now - dt.timedelta(seconds=60))
    report_call(fake_azure, API, 200, 9.0, now - dt.timedelta(hours=2))
    since = now - dt.timedelta(minutes=15)
    stats = apim.traffic(ctx, None, since)
    assert stats.since == since
    assert [(c.api, c.environment, c.status, c.latency_ms, c.model_version)
            for c in stats.calls] == [(API, "staging", 200, 12.0, None),
                                      (API, "staging", 502, 1003.25, None),
                                      ("credit-risk", "prod", 200, 41.5, None)]
    assert stats.calls[0].time == now - dt.timedelta(seconds=60)
    assert all(c.time.tzinfo is not None for c in stats.calls)
    sent = fake_azure.calls("GET", "/reports/byRequest$")[-1]
    assert sent.api_version == "2024-05-01"
    assert sent.query["$filter"].startswith(
        f"timestamp ge datetime'{since:%Y-%m-%dT%H:%M:%S}' and timestamp le datetime'")
    staging = apim.traffic(ctx, "staging", since)
    assert {c.api for c in staging.calls} == {API} and len(staging.calls) == 2
    assert fake_azure.calls("GET", "/reports/byRequest$")[-1].query["$filter"].endswith(
        f" and apiId eq '{API}'")
    assert len(apim.traffic(ctx, "staging", None).calls) == 3  # the last day
    assert "ml" not in ctx._clients, "pages never build the Azure ML client"


def test_traffic_reads_every_page(ctx: Any, fake_azure: FakeAzure) -> None:
    fake_azure.apim.page_size = 3  # type: ignore[attr-defined]
    now = dt.datetime.now(dt.UTC)
    for i in range(7):
        report_call(fake_azure, API, 200, float(i), now - dt.timedelta(seconds=10 * (7 - i)))
    stats = apim.traffic(ctx, "staging", now - dt.timedelta(minutes=5))
    assert [c.latency_ms for c in stats.calls] == [float(i) for i in range(7)]
    pages = fake_azure.calls("GET", "/reports/byRequest$")
    assert [(r.query["$top"], r.query["$skip"]) for r in pages] == [
        ("1000", "0"), ("1000", "3"), ("1000", "6"), ("1000", "7")]


def test_unreadable_reports_give_empty_figures_and_a_warning(
        ctx: Any, fake_azure: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    report_call(fake_azure, API, 200, 5.0, dt.datetime.now(dt.UTC))
    fake_azure.fail("GET", "/reports/byRequest$", 403, "AuthorizationFailed",
                    "The client does not have authorization to perform action "
                    "'Microsoft.ApiManagement/service/reports/read'.")
    stats = apim.traffic(ctx, None, None)
    assert stats.calls == () and stats.since is None
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("traffic figures unavailable" in r.getMessage()
               and "Contributor on the resource group" in r.getMessage() for r in warned)
    assert len(apim.traffic(ctx, None, None).calls) == 1, "the next read works again"
