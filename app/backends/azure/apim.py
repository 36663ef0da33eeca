"""API Management: an environment's API and its revisions, the key the gateway presents to the
endpoint, and the gateway's request reports as traffic figures.

What the local gateway does with config.json, API Management does with its own resources:

- the API of an environment (``gateway.name_for``/``path_for``, as locally), https only, no
  subscription key (callers present Entra ID tokens), created or updated, never deleted and
  recreated (the seed's way, which drops the API for every caller while it runs);
- revision N of the API is ``<api>;rev=N``: the first publish creates the API at that revision,
  later ones create the revision from the current one (``sourceApiId``); its operations
  (``score``) and its API-scope policy, sent as ``rawxml``: the very text the local gateway
  stores for the same ApiSpec, ``{{named values}}`` and all, which API Management resolves
  itself;
- a revision becomes current through a release (rollback = releasing an earlier revision);
- named values as the policy names them: the spec's plain ones (``issuer-url``), the
  environment's ``<env>-backend-url`` (plain) and ``<env>-backend-key`` (secret, or with
  ``azure.key_vault_uri`` a Key Vault reference to a secret the worker writes);
- before anything is sent, the policy is compiled and checked against the spec's rules with the
  local gateway's own code (app.gateway.config.check_revision): an element the gateways do not
  both run, an unlisted backend, a missing role check or a secret in an answer are refused
  naming the element, as locally; API Management's own refusal (400 ValidationError) becomes
  PolicyRefused with its message.

The panel calls ``traffic`` only: it reads API Management's request reports with the
management client, never azure.ai.ml.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from app.backends.azure.context import AzureContext, AzureSetupError, azure_errors
from app.backends.base import (
    ApiRevisionInfo,
    ApiSpec,
    BackendError,
    CallRecord,
    PolicyRefused,
    ResourceNotFound,
    TrafficStats,
)
from app.gateway.template import backend_key_name, backend_url_name

logger = logging.getLogger(__name__)

#: API Management's id of an API's policy (API scope).
POLICY_ID = "policy"
#: How far back ``traffic(…, since=None)`` reads: request reports are a per-call list, so
#: "as far back as cheaply available" is the last day.
TRAFFIC_LOOKBACK = dt.timedelta(days=1)
#: Request reports are read REPORT_PAGE records at a time, at most REPORT_MAX_PAGES pages.
REPORT_PAGE = 1000
REPORT_MAX_PAGES = 50
#: A page must not hang on API Management: one retry, short timeouts.
_READ_OPTIONS: dict[str, Any] = {"retry_total": 1, "connection_timeout": 5, "read_timeout": 15}
#: The scope of Key Vault's data plane (the worker writes the key's secret there).
KEY_VAULT_SCOPE = "https://vault.azure.net/.default"
KEY_VAULT_API_VERSION = "7.5"


# --------------------------------------------------------------------------- names


def named_value_names(environment: str) -> tuple[str, str]:
    """The environment's named values as the default policy names them: (backend URL, key).

    Kept in this one function until app/backends/azure/names.py (url_named_value,
    key_named_value) is on main; both derive from app.gateway.template.
    """
    return backend_url_name(environment), backend_key_name(environment)


def environment_of(ctx: AzureContext, api: str) -> str | None:
    """The environment whose API has this name (``credit-risk-staging`` → ``staging``)."""
    name = api.split(";rev=", 1)[0]
    for environment in ctx.config.environment_names:
        if ctx.config.gateway.name_for(environment) == name:
            return environment
    return None


def _service(ctx: AzureContext) -> tuple[Any, str, str]:
    """(client, resource group, service name)."""
    if not ctx.azure.apim_name:
        raise AzureSetupError("azure.apim_name is not set in the pipeline file: name the API "
                              "Management service (names are global)")
    return ctx.client("apim"), ctx.resource_group, ctx.azure.apim_name


def _revision_id(api: str, revision: int) -> str:
    return f"{api};rev={int(revision)}"


# --------------------------------------------------------------------------- reading


def _get_or_none(call: Any, *args: Any) -> Any:
    """The SDK ``get`` result, None on 404."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return call(*args)
    except ResourceNotFoundError:
        return None


def _named_values(client: Any, rg: str, svc: str) -> dict[str, Any]:
    """Every named value of the service by name (secret values are not in the listing)."""
    return {str(nv.name): nv for nv in client.named_value.list_by_service(rg, svc)}


def _secret_value(client: Any, rg: str, svc: str, name: str) -> str:
    """A secret named value's value (Key Vault-backed ones as API Management resolved them)."""
    return str(client.named_value.list_value(rg, svc, name).value or "")


def _compile_values(client: Any, rg: str, svc: str, listed: Mapping[str, Any],
                    plain: Mapping[str, str]) -> dict[str, Any]:
    """The named values a policy compiles against, as the local gateway holds them: every
    named value of the service (secrets with their values, so a policy copying a key into an
    answer is refused), the spec's plain ones as they are about to be set."""
    from app.gateway.policy import NamedValue

    values: dict[str, NamedValue] = {}
    for name, nv in listed.items():
        shown = str(nv.display_name or name)  # policies name a named value by display name
        if nv.secret:
            values[shown] = NamedValue(_secret_value(client, rg, svc, name), True)
        else:
            values[shown] = NamedValue(str(nv.value or ""), False)
    values.update({name: NamedValue(value, False) for name, value in plain.items()})
    return values


def _backend_url(listed: Mapping[str, Any], environment: str) -> str:
    """The environment's recorded backend URL; ResourceNotFound until a deploy set both it
    and the key (as the local gateway: no API without a backend behind it)."""
    url_name, key_name = named_value_names(environment)
    url = listed.get(url_name)
    if url is None or key_name not in listed or not url.value:
        raise ResourceNotFound(f"API Management has no backend for {environment} (named values "
                               f"{url_name} and {key_name}); deploy {environment} first")
    return str(url.value)


# --------------------------------------------------------------------------- checking


def _check(spec: ApiSpec, backend_url: str, values: Mapping[str, Any]) -> None:
    """The local gateway's checks for the revision (compile + serving rules), PolicyRefused
    naming the element."""
    from app.gateway.config import ConfigError, check_revision
    from app.gateway.policy import PolicyError

    document = {"name": spec.name, "path": spec.path, "revision": spec.revision,
                "environment": spec.environment, "backend_url": backend_url,
                "operations": [{"id": op.id, "method": op.method,
                                "url_template": op.url_template} for op in spec.operations],
                "policy_xml": spec.policy_xml, **spec.rules}
    try:
        check_revision(document, values)
    except (ConfigError, PolicyError) as exc:
        raise PolicyRefused(str(exc)) from None


def _refusal(exc: Any) -> str:
    """API Management's validation message: the summary and each field's complaint."""
    error = getattr(exc, "error", None)
    parts = [str(getattr(error, "message", "") or "").strip()]
    for detail in getattr(error, "details", None) or []:
        target = getattr(detail, "target", None)
        message = str(getattr(detail, "message", "") or "").strip()
        if message:
            parts.append(f"{target}: {message}" if target else message)
    text = " ".join(p for p in parts if p)
    return text or str(getattr(exc, "message", "") or exc).splitlines()[0]


# --------------------------------------------------------------------------- named values


def _put_named_value(ctx: AzureContext, name: str, *, value: str | None = None,
                     secret: bool = False, key_vault_secret: str | None = None) -> None:
    """Create or update one named value and wait for API Management (Location polling)."""
    from azure.mgmt.apimanagement.models import (
        KeyVaultContractCreateProperties,
        NamedValueCreateContract,
    )

    client, rg, svc = _service(ctx)
    if key_vault_secret is not None:
        body = NamedValueCreateContract(
            display_name=name, secret=True,
            key_vault=KeyVaultContractCreateProperties(secret_identifier=key_vault_secret))
    else:
        body = NamedValueCreateContract(display_name=name, value=value, secret=secret)
    with azure_errors(f"setting the named value {name} in API Management"):
        client.named_value.begin_create_or_update(rg, svc, name, body).result()


def set_plain_named_value(ctx: AzureContext, name: str, value: str) -> None:
    """Set a plain named value (``issuer-url``, ``<env>-backend-url``) unless it holds it."""
    client, rg, svc = _service(ctx)
    with azure_errors(f"reading the named value {name} in API Management"):
        current = _get_or_none(client.named_value.get, rg, svc, name)
    if current is not None and not current.secret and current.value == value:
        return
    _put_named_value(ctx, name, value=value)


def set_backend(ctx: AzureContext, environment: str, base_url: str, secret: str) -> None:
    """Point the environment's API at an endpoint: its scoring base URL (without ``/score``),
    then its key. Two writes, not one (API Management has no atomic pair): callers change the
    URL only where the key stays valid (an endpoint's URL and keys survive blue/green)."""
    url_name, _ = named_value_names(environment)
    set_plain_named_value(ctx, url_name, base_url.removesuffix("/score").rstrip("/"))
    gateway_use_key(ctx, environment, secret)


def gateway_use_key(ctx: AzureContext, environment: str, secret: str) -> None:
    """Make API Management present ``secret`` to the environment's endpoint.

    Without Key Vault: the secret named value ``<env>-backend-key`` (``secret: true``).
    With ``azure.key_vault_uri``: the worker writes the key as the Key Vault secret
    ``<env>-backend-key`` (its identity needs *Key Vault Secrets Officer* on the vault), the
    named value references that secret without a version (API Management's identity needs
    *Key Vault Secrets User*), and is refreshed at once instead of within 4 hours.
    Either way API Management takes a while to spread the value to its gateway nodes: the
    rotation's grace (``azure.key_grace_seconds``) covers that.
    """
    _, key_name = named_value_names(environment)
    client, rg, svc = _service(ctx)
    vault = ctx.azure.key_vault_uri.rstrip("/")
    secret_id = f"{vault}/secrets/{key_name}" if vault else None
    with azure_errors(f"reading the named value {key_name} in API Management"):
        current = _get_or_none(client.named_value.get, rg, svc, key_name)
        held_reference = None
        if current is not None and current.key_vault is not None:
            held_reference = str(current.key_vault.secret_identifier or "").rstrip("/")
        if (current is not None and current.secret and held_reference == secret_id
                and _secret_value(client, rg, svc, key_name) == secret):
            return  # API Management presents this key already
    if secret_id is None:
        _put_named_value(ctx, key_name, value=secret, secret=True)
        return
    _write_key_vault_secret(ctx, vault, key_name, secret)
    if held_reference != secret_id:
        _put_named_value(ctx, key_name, key_vault_secret=secret_id)  # reads the latest version
        return
    with azure_errors(f"refreshing the named value {key_name} from Key Vault"):
        client.named_value.begin_refresh_secret(rg, svc, key_name).result()


def _write_key_vault_secret(ctx: AzureContext, vault: str, name: str, value: str) -> None:
    """Set a Key Vault secret through the data-plane REST API (azure-core only: no
    azure-keyvault-secrets package), on the same transport as every other client."""
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import (
        BearerTokenCredentialPolicy,
        HeadersPolicy,
        RetryPolicy,
        UserAgentPolicy,
    )
    from azure.core.rest import HttpRequest

    transport = ctx.client_kwargs.get("transport")
    policies = [HeadersPolicy(), UserAgentPolicy(sdk_moniker="modelgate"), RetryPolicy(),
                BearerTokenCredentialPolicy(ctx.credential, KEY_VAULT_SCOPE)]
    request = HttpRequest("PUT", f"{vault}/secrets/{name}",
                          params={"api-version": KEY_VAULT_API_VERSION},
                          json={"value": value, "contentType": "modelgate endpoint key"})
    pipeline: Any = PipelineClient(vault, policies=policies, transport=transport)
    with azure_errors(f"writing the Key Vault secret {name}"), pipeline:
        pipeline.send_request(request).raise_for_status()


# --------------------------------------------------------------------------- publishing


def publish_revision(ctx: AzureContext, spec: ApiSpec) -> ApiRevisionInfo:
    """Check the revision with the local gateway's rules, set the spec's named values, then
    create or update the API revision, its operations and its policy (``rawxml``).

    Idempotent by (name, revision): publishing again re-checks, re-sends the policy and
    updates the revision in place.

    Raises:
        ResourceNotFound: the environment has no backend in API Management yet.
        PolicyRefused: the local gateway's checks or API Management refused the policy.
    """
    client, rg, svc = _service(ctx)
    with azure_errors(f"reading API Management's named values for {spec.name}"):
        listed = _named_values(client, rg, svc)
        backend_url = _backend_url(listed, spec.environment)
        values = _compile_values(client, rg, svc, listed, spec.named_values)
    _check(spec, backend_url, values)  # before anything is written
    for name, value in spec.named_values.items():
        held = listed.get(name)
        if held is None or held.secret or held.value != value:
            _put_named_value(ctx, name, value=value)
    current = _ensure_revision(ctx, spec)
    rev_id = _revision_id(spec.name, spec.revision)
    _put_operations(ctx, rev_id, spec)
    _put_policy(ctx, rev_id, spec)
    logger.info("API Management: %s revision %s published (current: %s)", spec.name,
                spec.revision, current)
    return ApiRevisionInfo(spec.name, spec.revision, spec.path, current == spec.revision)


def _ensure_revision(ctx: AzureContext, spec: ApiSpec) -> int:
    """Create or update revision ``spec.revision``; return the API's current revision."""
    from azure.mgmt.apimanagement.models import ApiCreateOrUpdateParameter

    client, rg, svc = _service(ctx)
    rev_id = _revision_id(spec.name, spec.revision)
    common: dict[str, Any] = {
        "display_name": spec.name, "path": spec.path, "protocols": ["https"],
        # callers present Entra ID tokens, checked by the policy; no APIM subscription key
        "subscription_required": False,
        "api_revision_description": f"modelgate: revision {spec.revision} of the "
                                    f"{spec.environment} API",
    }
    with azure_errors(f"publishing {spec.name} revision {spec.revision} to API Management"):
        api = _get_or_none(client.api.get, rg, svc, spec.name)
        if api is None:
            # A new API is live at once, at this revision; it has no service URL, so nothing
            # is forwarded until its policy (set next) names the backend.
            client.api.begin_create_or_update(
                rg, svc, spec.name,
                ApiCreateOrUpdateParameter(api_revision=str(spec.revision), **common)).result()
            return spec.revision
        if _get_or_none(client.api.get, rg, svc, rev_id) is None:
            source = ctx.resource_id(f"Microsoft.ApiManagement/service/{svc}/apis/{spec.name}")
            client.api.begin_create_or_update(
                rg, svc, rev_id,
                ApiCreateOrUpdateParameter(source_api_id=source, **common)).result()
        else:
            client.api.begin_create_or_update(rg, svc, rev_id,
                                              ApiCreateOrUpdateParameter(**common),
                                              if_match="*").result()
    return int(api.api_revision or 1)


def _put_operations(ctx: AzureContext, rev_id: str, spec: ApiSpec) -> None:
    """The revision's operations are exactly the spec's."""
    from azure.mgmt.apimanagement.models import OperationContract

    client, rg, svc = _service(ctx)
    wanted = {op.id for op in spec.operations}
    with azure_errors(f"setting the operations of {rev_id} in API Management"):
        for op in spec.operations:
            client.api_operation.create_or_update(
                rg, svc, rev_id, op.id,
                OperationContract(display_name=op.id, method=op.method,
                                  url_template=op.url_template))
        for existing in client.api_operation.list_by_api(rg, svc, rev_id):
            if existing.name not in wanted:
                client.api_operation.delete(rg, svc, rev_id, existing.name, if_match="*")


def _put_policy(ctx: AzureContext, rev_id: str, spec: ApiSpec) -> None:
    """Send the policy text unchanged, as rawxml (``{{named values}}`` resolved by APIM)."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.apimanagement.models import PolicyContract

    client, rg, svc = _service(ctx)
    body = PolicyContract(value=spec.policy_xml, format="rawxml")
    with azure_errors(f"setting the policy of {rev_id} in API Management"):
        try:
            client.api_policy.create_or_update(rg, svc, rev_id, POLICY_ID, body, if_match="*")
        except HttpResponseError as exc:
            if exc.status_code == 400:  # ValidationError: APIM's own reading of the policy
                raise PolicyRefused(f"API Management refused the policy of {rev_id}: "
                                    f"{_refusal(exc)}") from None
            raise


def make_revision_current(ctx: AzureContext, api: str, revision: int) -> ApiRevisionInfo:
    """Release the revision: API Management serves it from then on (rollback = releasing an
    earlier one). Idempotent: a revision already current is not released again.

    Raises:
        ResourceNotFound: the revision was not published, or the environment has no backend.
    """
    from azure.mgmt.apimanagement.models import ApiReleaseContract

    client, rg, svc = _service(ctx)
    rev_id = _revision_id(api, revision)
    with azure_errors(f"making {api} revision {revision} current in API Management"):
        published = _get_or_none(client.api.get, rg, svc, rev_id)
        if published is None:
            raise ResourceNotFound(f"{api} revision {revision} was not published")
        environment = environment_of(ctx, api)
        if environment is None:
            raise ResourceNotFound(f"no environment of the pipeline file publishes {api}")
        _backend_url(_named_values(client, rg, svc), environment)
        current = client.api.get(rg, svc, api)
        if str(current.api_revision) != str(revision):
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
            client.api_release.create_or_update(
                rg, svc, api, f"rev-{revision}-{stamp}",
                ApiReleaseContract(api_id=f"/apis/{rev_id}",
                                   notes=f"modelgate: revision {revision} made current"))
            logger.info("API Management: %s revision %s released", api, revision)
    return ApiRevisionInfo(api, revision, str(published.path or ""), True)


# --------------------------------------------------------------------------- traffic


def traffic(ctx: AzureContext, environment: str | None,
            since: dt.datetime | None) -> TrafficStats:
    """Calls through API Management since ``since`` (None: the last TRAFFIC_LOOKBACK), from
    its request reports, oldest first.

    Pages read this: when API Management cannot be read the figures are empty and a warning
    is logged (TrafficStats has no field to say "unknown"), rather than the page failing.
    """
    now = dt.datetime.now(dt.UTC)
    start = (since if since is not None else now - TRAFFIC_LOOKBACK)
    start = start.astimezone(dt.UTC) if start.tzinfo else start.replace(tzinfo=dt.UTC)
    clauses = [f"timestamp ge datetime'{start:%Y-%m-%dT%H:%M:%S}'",
               f"timestamp le datetime'{now + dt.timedelta(minutes=1):%Y-%m-%dT%H:%M:%S}'"]
    if environment is not None:
        # an id, not a URL: "/apis/credit-risk" is filtered as apiId eq 'credit-risk'
        clauses.append(f"apiId eq '{ctx.config.gateway.name_for(environment)}'")
    try:
        records = _report_records(ctx, " and ".join(clauses))
    except BackendError as exc:
        logger.warning("traffic figures unavailable: %s", exc)
        return TrafficStats(since, ())
    calls = sorted(_calls(ctx, records, start, environment), key=lambda c: c.time)
    return TrafficStats(since, tuple(calls))


def _report_records(ctx: AzureContext, report_filter: str) -> list[Any]:
    """Every request report record the filter selects, page by page: the SDK's
    ``list_by_request`` reads one page and ignores ``nextLink``, so ``$top``/``$skip``."""
    client, rg, svc = _service(ctx)
    records: list[Any] = []
    with azure_errors("reading API Management's request reports"):
        for _ in range(REPORT_MAX_PAGES):
            page = list(client.reports.list_by_request(rg, svc, report_filter,
                                                       top=REPORT_PAGE, skip=len(records),
                                                       **_READ_OPTIONS))
            if not page:
                return records
            records.extend(page)
    logger.warning("traffic figures: more than %d calls since the start; the rest are not "
                   "read", len(records))
    return records


def _calls(ctx: AzureContext, records: Iterable[Any], start: dt.datetime,
           environment: str | None) -> Iterable[CallRecord]:
    for record in records:
        when = record.timestamp
        if when is None or record.response_code is None:
            continue
        when = when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)
        api = str(record.api_id or "").rsplit("/", 1)[-1].split(";rev=", 1)[0]
        env = environment_of(ctx, api)
        if when < start or (environment is not None and env != environment):
            continue
        # the report does not say which model version answered (the response body does)
        yield CallRecord(time=when, api=api, status=int(record.response_code),
                         latency_ms=float(record.api_time or 0.0), environment=env)
