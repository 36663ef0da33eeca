"""API Management's management API (and Key Vault's secrets) in the fake Azure.

What generic ARM does not cover, answered like the service (shapes after the examples in
azure-rest-api-specs, specification/apimanagement/.../stable/2024-05-01/examples):

- APIs and revisions: ``apis/<api>`` is the current revision, ``apis/<api>;rev=N`` any
  revision (the SDK sends ``%3Brev%3D``); a new API starts at its ``apiRevision`` (default 1),
  a revision is created from ``sourceApiId`` (operations and policy copied); PUTs answer
  201/200 with ``Azure-AsyncOperation`` (``tenant/operationResults``), then the SDK GETs the
  API;
- operations, the API-scope policy (``format`` rawxml or xml, ``If-Match`` required; answers
  400 ValidationError for XML that is not well-formed, an unknown policy element or a
  ``{{named value}}`` the service does not hold; read back reformatted with CRLF line ends,
  as API Management does), releases (a release makes its revision current), revision lists;
- named values: PUT answers 201/200 with a ``Location`` (``…?asyncId=…``) that answers 202
  ``lro_polls`` times, then the named value; a secret's value is never in a GET (``listValue``
  gives it); Key Vault-backed ones read the vault's latest version at PUT and at
  ``refreshSecret`` (202 + Location);
- request reports (``reports/byRequest``) from ``fake.apim_requests``, a list of records as
  the service answers them (:func:`report_call` adds one), filtered by ``$filter``
  (``timestamp ge/le datetime'…'`` required, ``apiId eq '<id>'``), ``$top`` up to a page
  size (``fake.apim.page_size``), ``$skip``, ``nextLink``;
- Key Vault's data plane: ``PUT https://<vault>.vault.azure.net/secrets/<name>`` keeps a new
  version (a bearer token required).

Everything under a service answers 404 unless the service itself exists (``put_resource`` or
a provisioning PUT; :func:`seed_service`).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from tests.azure.fake_azure import ARM, SUBSCRIPTION, Answer, FakeAzure, Recorded, arm_error

SERVICE = (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
           r"Microsoft\.ApiManagement/service/(?P<svc>[^/]+)")
SERVICE_TYPE = "Microsoft.ApiManagement/service"
_NV_NAME = re.compile(r"^[A-Za-z0-9-._]{1,256}$")
_REFERENCE = re.compile(r"\{\{([^{}]*)\}\}")
_FILTER_TIME = re.compile(r"timestamp\s+(ge|le)\s+datetime'([^']+)'", re.I)
_FILTER_API = re.compile(r"apiId\s+eq\s+'([^']*)'", re.I)
# Policy elements API Management knows (a fair subset of its reference); others answer 400.
KNOWN_POLICY_ELEMENTS = frozenset("""
policies inbound backend outbound on-error base validate-jwt openid-config audiences audience
issuers issuer required-claims claim value issuer-signing-keys decryption-keys key check-header
rate-limit rate-limit-by-key quota quota-by-key set-header set-query-parameter
set-backend-service set-body set-status set-variable set-method rewrite-uri cors allowed-origins
origin allowed-methods method allowed-headers header expose-headers return-response
send-request send-one-way-request forward-request choose when otherwise retry trace
log-to-eventhub mock-response ip-filter address address-range json-to-xml xml-to-json
find-and-replace cache-lookup cache-store cache-lookup-value cache-store-value
cache-remove-value authentication-basic authentication-certificate
authentication-managed-identity limit-concurrency emit-metric dimension include-fragment wait
proxy validate-content validate-headers validate-parameters validate-status-code
validate-azure-ad-token client-application-ids backend-application-ids set-url
""".split())
_VALIDATION_SUMMARY = "One or more fields contain incorrect values:"


def validation_error(target: str, message: str) -> Answer:
    """API Management's 400: a summary and each field's complaint in ``details``."""
    return Answer(400, {"error": {"code": "ValidationError", "message": _VALIDATION_SUMMARY,
                                  "details": [{"code": "ValidationError", "target": target,
                                               "message": message}]}})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Revision:
    number: int
    properties: dict[str, Any]
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: str | None = None
    created: str = field(default_factory=_now)


@dataclass
class Api:
    name: str
    current: int
    revisions: dict[int, Revision] = field(default_factory=dict)
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Service:
    id: str
    named_values: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-case name
    apis: dict[str, Api] = field(default_factory=dict)


class ApimFake:
    """The state of every API Management service of one FakeAzure."""

    def __init__(self, fake: FakeAzure) -> None:
        self.fake = fake
        self.services: dict[str, Service] = {}
        self.requests: list[dict[str, Any]] = []  # request report records, as APIM answers
        self.vault: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (host, name) -> versions
        self.page_size = 50
        self._operations: dict[str, int] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ state

    def service(self, match: re.Match[str]) -> Service | None:
        """The service the request addresses, None unless it exists as an ARM resource."""
        service_id = (f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers/"
                      f"{SERVICE_TYPE}/{match['svc']}")
        if self.fake.get(service_id) is None:
            return None
        return self.services.setdefault(service_id.lower(), Service(service_id))

    def operation(self) -> str:
        """A new asynchronous operation, done after ``lro_polls`` polls."""
        op_id = f"apimop{next(self._ids):05d}"
        self._operations[op_id] = self.fake.lro_polls
        return op_id

    def poll(self, op_id: str) -> bool:
        """Whether the operation is done (counts a poll down)."""
        left = self._operations.get(op_id, 0)
        if left > 0:
            self._operations[op_id] = left - 1
            return False
        return True

    # ------------------------------------------------------------------ contracts

    @staticmethod
    def api_contract(service: Service, api: Api, number: int, addressed: str) -> dict[str, Any]:
        revision = api.revisions[number]
        return {"id": f"{service.id}/apis/{addressed}", "type": f"{SERVICE_TYPE}/apis",
                "name": addressed,
                "properties": {**copy.deepcopy(revision.properties),
                               "apiRevision": str(number), "isCurrent": number == api.current,
                               "isOnline": True, "provisioningState": "Succeeded"}}

    @staticmethod
    def named_value_contract(service: Service, entry: dict[str, Any]) -> dict[str, Any]:
        props = {k: copy.deepcopy(v) for k, v in entry.items() if not k.startswith("_")}
        if props.get("secret"):
            props.pop("value", None)  # API Management never lists a secret's value
        return {"id": f"{service.id}/namedValues/{entry['_name']}",
                "type": f"{SERVICE_TYPE}/namedValues", "name": entry["_name"],
                "properties": {**props, "provisioningState": "Succeeded"}}


def _api_and_revision(service: Service, addressed: str) -> tuple[str, Api | None, int | None]:
    """(API name, the API, the revision number addressed or None for the current one)."""
    name, _, rev = addressed.partition(";rev=")
    api = service.apis.get(name.lower())
    if not rev:
        return name, api, api.current if api else None
    try:
        return name, api, int(rev)
    except ValueError:
        return name, api, None


def _not_found(what: str) -> Answer:
    return arm_error(404, "ResourceNotFound", f"{what} not found.")


class Routes:
    """API Management's and Key Vault's answers; each handler takes (service, request, match)
    once :meth:`install` found the service the request addresses."""

    def __init__(self, apim: ApimFake) -> None:
        self.apim = apim

    def install(self, fake: FakeAzure) -> None:
        handlers: list[tuple[str, str, Any]] = [
            ("GET", r"/tenant/operationResults/(?P<op>[^/]+)$", self.operation_result),
            ("GET", r"/namedValues$", self.named_values),
            ("POST", r"/namedValues/(?P<nv>[^/]+)/listValue$", self.list_value),
            ("POST", r"/namedValues/(?P<nv>[^/]+)/refreshSecret$", self.refresh_secret),
            ("*", r"/namedValues/(?P<nv>[^/]+)$", self.named_value),
            ("GET", r"/apis$", self.apis),
            ("GET", r"/apis/(?P<api>[^/]+)/operations$", self.operations),
            ("*", r"/apis/(?P<api>[^/]+)/operations/(?P<op>[^/]+)$", self.operation),
            ("*", r"/apis/(?P<api>[^/]+)/policies/policy$", self.policy),
            ("GET", r"/apis/(?P<api>[^/]+)/revisions$", self.revisions),
            ("GET", r"/apis/(?P<api>[^/]+)/releases$", self.releases),
            ("*", r"/apis/(?P<api>[^/]+)/releases/(?P<rel>[^/]+)$", self.release),
            ("*", r"/apis/(?P<api>[^/]+)$", self.api_entity),
            ("GET", r"/reports/byRequest$", self.by_request),
        ]
        for method, tail, handler in handlers:
            fake.route(method, SERVICE + tail)(self._within_service(handler))
        fake.route("*", r"^https://(?P<vault>[a-z0-9-]+\.vault\.azure\.net)/secrets/"
                        r"(?P<name>[^/]+)$")(self.vault_secret)

    def _within_service(self, handler: Any) -> Any:
        def answer(fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
            service = self.apim.service(match)
            if service is None:
                return arm_error(404, "ResourceNotFound",
                                 f"Api Management service '{match['svc']}' not found.")
            return handler(service, request, match)  # type: ignore[no-any-return]
        return answer

    # ------------------------------------------------------------------ async operations

    def operation_result(self, service: Service, request: Recorded,
                         match: re.Match[str]) -> Answer:
        if not self.apim.poll(match["op"]):
            return Answer(200, {"id": match["op"], "status": "InProgress"}, {"Retry-After": "0"})
        return Answer(200, {"id": match["op"], "status": "Succeeded"})

    def _async_operation(self, request: Recorded) -> dict[str, str]:
        base = request.url.split("/apis/")[0]
        return {"Azure-AsyncOperation": f"{base}/tenant/operationResults/"
                                        f"{self.apim.operation()}"
                                        f"?api-version={request.api_version}"}

    def _location(self, request: Recorded, code: int) -> dict[str, str]:
        """The named value's URL with the operation's asyncId (what APIM's Location holds)."""
        target = request.url.split("?")[0].removesuffix("/refreshSecret")
        query = urlencode({"api-version": request.api_version,
                           "asyncId": self.apim.operation(), "asyncCode": code})
        return {"Location": f"{target}?{query}"}

    # ------------------------------------------------------------------ named values

    def _resolve_key_vault(self, entry: dict[str, Any]) -> Answer | None:
        """Read a Key Vault reference's secret as the service's identity would (or refuse)."""
        identifier = str(entry["keyVault"].get("secretIdentifier") or "")
        parts = urlsplit(identifier)
        path = parts.path.strip("/").split("/")
        versions = self.apim.vault.get((parts.netloc.lower(), path[1] if len(path) > 1 else ""))
        if parts.scheme != "https" or len(path) < 2 or path[0] != "secrets" or not versions:
            return validation_error("keyVault", f"Cannot retrieve the secret {identifier!r} "
                                                "from Key Vault with the service's identity.")
        wanted = path[2] if len(path) > 2 else None
        value = next((v for ver, v in reversed(versions) if wanted in (None, ver)), None)
        if value is None:
            return validation_error("keyVault", f"Secret version not found: {identifier!r}")
        entry["_resolved"] = value
        entry["keyVault"]["lastStatus"] = {"code": "Success", "timeStampUtc": _now()}
        return None

    def named_values(self, service: Service, request: Recorded,
                     match: re.Match[str]) -> Answer:
        value = [ApimFake.named_value_contract(service, e) for e in service.named_values.values()]
        return Answer(200, {"value": value, "count": len(value), "nextLink": None})

    def list_value(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        entry = service.named_values.get(unquote(match["nv"]).lower())
        if entry is None:
            return _not_found(f"Named value '{unquote(match['nv'])}'")
        return Answer(200, {"value": entry.get("_resolved", entry.get("value"))})

    def refresh_secret(self, service: Service, request: Recorded,
                       match: re.Match[str]) -> Answer:
        entry = service.named_values.get(unquote(match["nv"]).lower())
        if entry is None:
            return _not_found(f"Named value '{unquote(match['nv'])}'")
        if not entry.get("keyVault"):
            return validation_error("keyVault", "The named value is not a Key Vault reference.")
        refused = self._resolve_key_vault(entry)
        if refused is not None:
            return refused
        return Answer(202, None, self._location(request, 200))

    def named_value(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        name = unquote(match["nv"])
        entry = service.named_values.get(name.lower())
        if request.method == "GET":
            if entry is None:
                return _not_found(f"Named value '{name}'")
            op_id = request.query.get("asyncId")
            if op_id and not self.apim.poll(op_id):
                return Answer(202, None, {"Location": request.url, "Retry-After": "0"})
            return Answer(200, ApimFake.named_value_contract(service, entry))
        if request.method == "DELETE":
            service.named_values.pop(name.lower(), None)
            return Answer(200 if entry else 204)
        if request.method != "PUT":
            raise AssertionError(f"named values: no {request.method}")
        props = copy.deepcopy(dict((request.body or {}).get("properties") or {}))
        if not _NV_NAME.match(str(props.get("displayName") or "")):
            return validation_error("displayName", "Display name may contain only letters, "
                                                   "digits, periods, dashes and underscores.")
        if not props.get("value") and not props.get("keyVault"):
            return validation_error("value", "Either value or keyVault must be provided.")
        fresh = {**props, "_name": name, "tags": props.get("tags") or [],
                 "secret": bool(props.get("secret"))}
        if props.get("keyVault"):
            fresh.pop("value", None)
            refused = self._resolve_key_vault(fresh)
            if refused is not None:
                return refused
        service.named_values[name.lower()] = fresh
        answered = ApimFake.named_value_contract(service, fresh)
        answered["properties"]["provisioningState"] = "InProgress"
        code = 200 if entry is not None else 201
        return Answer(code, answered, self._location(request, code))

    # ------------------------------------------------------------------ APIs

    def apis(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        value = [ApimFake.api_contract(service, api, api.current, api.name)
                 for api in service.apis.values()]
        return Answer(200, {"value": value, "count": len(value), "nextLink": None})

    def api_entity(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        addressed = unquote(match["api"])
        name, api, number = _api_and_revision(service, addressed)
        if request.method == "GET":
            if api is None or number not in api.revisions:
                return _not_found(f"API '{addressed}'")
            return Answer(200, ApimFake.api_contract(service, api, number, addressed))
        if request.method == "DELETE":
            raise AssertionError("modelgate never deletes an API (the seed's recreate "
                                 "dropped it for every caller)")
        if request.method != "PUT":
            raise AssertionError(f"apis: no {request.method}")
        props = copy.deepcopy(dict((request.body or {}).get("properties") or {}))
        if not re.match(r"^[A-Za-z0-9._~/-]{0,400}$", str(props.get("path", ""))):
            return validation_error("path", "Invalid path.")
        existed = api is not None and number in api.revisions
        refused = self._put_api(service, addressed, props)
        if refused is not None:
            return refused
        name, api, number = _api_and_revision(service, addressed)
        assert api is not None and number is not None
        answered = ApimFake.api_contract(service, api, number, addressed)
        answered["properties"]["provisioningState"] = "InProgress"
        return Answer(200 if existed else 201, answered, self._async_operation(request))

    def _put_api(self, service: Service, addressed: str,
                 props: dict[str, Any]) -> Answer | None:
        """Create or update the API or revision a PUT addresses (None: done)."""
        name, api, number = _api_and_revision(service, addressed)
        source = props.pop("sourceApiId", None)
        keep = {k: v for k, v in props.items() if k not in ("apiRevision", "isCurrent")}
        if ";rev=" not in addressed and api is None:
            first = int(props.get("apiRevision") or 1)
            api = service.apis[name.lower()] = Api(name, first)
            api.revisions[first] = Revision(first, keep)
        elif api is None:
            return _not_found(f"API '{name}'")
        elif number is None:
            return validation_error("apiId", "Invalid revision.")
        elif number in api.revisions:
            api.revisions[number].properties.update(keep)
        else:
            if not source:
                return validation_error("sourceApiId", "A new revision needs sourceApiId.")
            _, src_api, src_number = _api_and_revision(
                service, str(source).rstrip("/").rsplit("/apis/", 1)[-1])
            if src_api is not api or src_number not in api.revisions:
                return validation_error("sourceApiId", f"Source API '{source}' not found.")
            origin = api.revisions[src_number]
            api.revisions[number] = Revision(
                number, {**copy.deepcopy(origin.properties), **keep},
                copy.deepcopy(origin.operations), origin.policy)
        # one path, protocol list and display name per API, whichever revision sets them
        for shared in ("path", "protocols", "subscriptionRequired", "displayName"):
            if shared in keep:
                for revision in api.revisions.values():
                    revision.properties[shared] = keep[shared]
        return None

    def _revision_of(self, service: Service, raw: str) -> tuple[str, Revision | None]:
        addressed = unquote(raw)
        _, api, number = _api_and_revision(service, addressed)
        if api is None or number not in api.revisions:
            return addressed, None
        return addressed, api.revisions[number]

    def operations(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        addressed, revision = self._revision_of(service, match["api"])
        if revision is None:
            return _not_found(f"API '{addressed}'")
        value = [{"id": f"{service.id}/apis/{addressed}/operations/{op}",
                  "type": f"{SERVICE_TYPE}/apis/operations", "name": op, "properties": props}
                 for op, props in revision.operations.items()]
        return Answer(200, {"value": value, "count": len(value), "nextLink": None})

    def operation(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        addressed, revision = self._revision_of(service, match["api"])
        op = unquote(match["op"])
        if revision is None:
            return _not_found(f"API '{addressed}'")
        body = {"id": f"{service.id}/apis/{addressed}/operations/{op}",
                "type": f"{SERVICE_TYPE}/apis/operations", "name": op}
        if request.method == "GET":
            if op not in revision.operations:
                return _not_found(f"Operation '{op}'")
            return Answer(200, {**body, "properties": revision.operations[op]})
        if request.method == "DELETE":
            if "if-match" not in request.headers:
                return arm_error(412, "PreconditionFailed", "If-Match header is required.")
            revision.operations.pop(op, None)
            return Answer(200)
        props = copy.deepcopy(dict((request.body or {}).get("properties") or {}))
        if props.get("method") not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"} or \
                not str(props.get("urlTemplate", "")).startswith("/"):
            return validation_error("urlTemplate", "Invalid method or URL template.")
        existed = op in revision.operations
        revision.operations[op] = {"templateParameters": [], "responses": [], **props}
        return Answer(200 if existed else 201, {**body, "properties": revision.operations[op]})

    def policy(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        addressed, revision = self._revision_of(service, match["api"])
        if revision is None:
            return _not_found(f"API '{addressed}'")
        body = {"id": f"{service.id}/apis/{addressed}/policies/policy",
                "type": f"{SERVICE_TYPE}/apis/policies", "name": "policy"}
        if request.method == "GET":
            if revision.policy is None:
                return _not_found("Policy")
            fmt = request.query.get("format", "xml")
            # API Management hands back its own formatting unless asked for rawxml
            text = revision.policy if fmt == "rawxml" else "\r\n".join(
                line.rstrip() for line in revision.policy.splitlines())
            return Answer(200, {**body, "properties": {"value": text, "format": fmt}})
        if request.method == "DELETE":
            revision.policy = None
            return Answer(200)
        if "if-match" not in request.headers:
            return arm_error(412, "PreconditionFailed", "If-Match header is required.")
        props = copy.deepcopy(dict((request.body or {}).get("properties") or {}))
        fmt, value = props.get("format", "xml"), props.get("value")
        if fmt not in ("xml", "rawxml") or not isinstance(value, str):
            return validation_error("format", f"Unsupported policy format {fmt!r}.")
        refused = _validate_policy(service, value)
        if refused is not None:
            return refused
        existed = revision.policy is not None
        revision.policy = value
        return Answer(200 if existed else 201,
                      {**body, "properties": {"value": value, "format": fmt}})

    def revisions(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        name = unquote(match["api"])
        api = service.apis.get(name.lower())
        if api is None:
            return _not_found(f"API '{name}'")
        value = [{"apiId": f"{service.id}/apis/{api.name};rev={n}", "apiRevision": str(n),
                  "createdDateTime": r.created, "updatedDateTime": r.created,
                  "description": r.properties.get("apiRevisionDescription"),
                  "isOnline": True, "isCurrent": n == api.current}
                 for n, r in sorted(api.revisions.items())]
        return Answer(200, {"value": value, "count": len(value), "nextLink": ""})

    def releases(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        api = service.apis.get(unquote(match["api"]).lower())
        if api is None:
            return _not_found(f"API '{unquote(match['api'])}'")
        value = list(api.releases.values())
        return Answer(200, {"value": value, "count": len(value), "nextLink": None})

    def release(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        name, release_id = unquote(match["api"]), unquote(match["rel"])
        api = service.apis.get(name.lower())
        if api is None:
            return _not_found(f"API '{name}'")
        if request.method == "GET":
            if release_id not in api.releases:
                return _not_found(f"Release '{release_id}'")
            return Answer(200, api.releases[release_id])
        if request.method != "PUT":
            raise AssertionError(f"releases: no {request.method}")
        props = copy.deepcopy(dict((request.body or {}).get("properties") or {}))
        target = str(props.get("apiId") or "").rstrip("/").rsplit("/apis/", 1)[-1]
        _, target_api, number = _api_and_revision(service, target)
        if target_api is not api or number not in api.revisions:
            return validation_error("apiId", f"API revision '{props.get('apiId')}' not found.")
        api.current = number
        existed = release_id in api.releases
        stamp = _now()
        api.releases[release_id] = {
            "id": f"{service.id}/apis/{api.name}/releases/{release_id}",
            "type": f"{SERVICE_TYPE}/apis/releases", "name": release_id,
            "properties": {"apiId": f"{service.id}/apis/{api.name};rev={number}",
                           "createdDateTime": stamp, "updatedDateTime": stamp,
                           "notes": props.get("notes")}}
        return Answer(200 if existed else 201, api.releases[release_id])

    # ------------------------------------------------------------------ reports

    def by_request(self, service: Service, request: Recorded, match: re.Match[str]) -> Answer:
        text = request.query.get("$filter", "")
        bounds = {op.lower(): _parse_time(value) for op, value in _FILTER_TIME.findall(text)}
        if "ge" not in bounds:
            return validation_error("$filter", "timestamp ge datetime'…' is required.")
        api_filter = _FILTER_API.search(text)
        rows = []
        for record in self.apim.requests:
            when = _parse_time(record["timestamp"])
            if when < bounds["ge"] or ("le" in bounds and when > bounds["le"]):
                continue
            record_api = str(record.get("apiId", "")).rsplit("/", 1)[-1].split(";rev=")[0]
            if api_filter and record_api != api_filter.group(1):
                continue
            rows.append(record)
        skip = int(request.query.get("$skip", "0"))
        # $top up to the service's own page size; the rest is behind nextLink (which the
        # SDK's list_by_request does not follow)
        size = min(int(request.query.get("$top", self.apim.page_size)), self.apim.page_size)
        next_link = None
        if skip + size < len(rows):
            query = urlencode({"api-version": request.api_version, "$filter": text,
                               "$top": size, "$skip": skip + size})
            next_link = f"{request.url.split('?')[0]}?{query}"
        page = rows[skip:skip + size]
        return Answer(200, {"value": page, "count": len(page), "nextLink": next_link})

    # ------------------------------------------------------------------ Key Vault

    def vault_secret(self, fake: FakeAzure, request: Recorded, match: re.Match[str]) -> Answer:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return Answer(401, {"error": {"code": "Unauthorized",
                                          "message": "AKV10000: Request is missing a Bearer "
                                                     "or PoP token."}},
                          {"WWW-Authenticate": 'Bearer authorization="https://login.'
                                               'microsoftonline.com/tenant", '
                                               'resource="https://vault.azure.net"'})
        if request.method != "PUT":
            raise AssertionError(f"the Key Vault fake has no {request.method}")
        value = (request.body or {}).get("value")
        if not isinstance(value, str):
            return Answer(400, {"error": {"code": "BadParameter", "message": "value is required"}})
        key = (match["vault"].lower(), match["name"])
        version = uuid.uuid4().hex
        self.apim.vault.setdefault(key, []).append((version, value))
        return Answer(200, {"value": value, "id": f"https://{key[0]}/secrets/{key[1]}/{version}",
                            "attributes": {"enabled": True}})


def install(fake: FakeAzure) -> None:
    """Register API Management's and Key Vault's routes on the fake; ``fake.apim`` holds
    the state and ``fake.apim_requests`` the request reports."""
    apim = ApimFake(fake)
    fake.apim = apim  # type: ignore[attr-defined]
    fake.apim_requests = apim.requests  # type: ignore[attr-defined]
    Routes(apim).install(fake)


def _parse_time(value: str) -> dt.datetime:
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # fractions of any length (APIM answers 7 digits)
        head, _, rest = text.partition(".")
        digits = re.match(r"\d*", rest).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _validate_policy(service: Service, value: str) -> Answer | None:
    """What API Management checks when it saves a policy."""
    try:
        root = ET.fromstring(value)
    except ET.ParseError as exc:
        return validation_error("representation", f"'{value[:20]}…' is not a valid XML "
                                                  f"document: {exc}")
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag not in KNOWN_POLICY_ELEMENTS:
            return validation_error(element.tag, f"Error in element '{element.tag}': this "
                                                 "policy is not known.")
    known = {entry.get("displayName", "").lower() for entry in service.named_values.values()}
    for reference in _REFERENCE.findall(value):
        if reference.strip().lower() not in known:
            return validation_error("representation", f"Cannot find a property "
                                                       f"'{reference.strip()}'.")
    return None


# --------------------------------------------------------------------------- test helpers


def service_id(resource_group: str = "modelgate-rg", name: str = "modelgate-apim-test") -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{resource_group}/providers/"
            f"{SERVICE_TYPE}/{name}")


def seed_service(fake: FakeAzure, resource_group: str = "modelgate-rg",
                 name: str = "modelgate-apim-test") -> str:
    """An API Management service as provisioning leaves it (its sub-resources answer)."""
    resource_id = service_id(resource_group, name)
    fake.put_resource(resource_id, {
        "location": "westeurope", "sku": {"name": "Developer", "capacity": 1},
        "properties": {"provisioningState": "Succeeded", "publisherEmail": "ops@example.com",
                       "publisherName": "modelgate",
                       "gatewayUrl": f"https://{name}.azure-api.net",
                       "virtualNetworkType": "External"}})
    return resource_id


def state(fake: FakeAzure, resource_group: str = "modelgate-rg",
          name: str = "modelgate-apim-test") -> Service:
    """The fake service's state (named values, APIs and revisions)."""
    apim: ApimFake = fake.apim  # type: ignore[attr-defined]
    return apim.services.setdefault(service_id(resource_group, name).lower(),
                                    Service(service_id(resource_group, name)))


def named_value(fake: FakeAzure, name: str, **service: str) -> str | None:
    """The value API Management holds for a named value now (a Key Vault reference as it
    last resolved it), None when there is none."""
    entry = state(fake, **service).named_values.get(name.lower())
    if entry is None:
        return None
    return str(entry.get("_resolved", entry.get("value")))


def gateway_view(fake: FakeAzure, environment: str, **service: str) -> tuple[str, str] | None:
    """(backend URL, key) API Management presents for an environment, None if either is
    missing (the contract harness's view)."""
    url = named_value(fake, f"{environment}-backend-url", **service)
    key = named_value(fake, f"{environment}-backend-key", **service)
    return None if url is None or key is None else (url, key)


def report_call(fake: FakeAzure, api: str, status: int, latency_ms: float,
                when: dt.datetime) -> dict[str, Any]:
    """Add one call to API Management's request reports, shaped as ``reports/byRequest``
    answers it."""
    record = {"apiId": f"/apis/{api}", "operationId": f"/apis/{api}/operations/score",
              "productId": "/products/-", "userId": "/users/-", "method": "POST",
              "url": f"https://modelgate-apim-test.azure-api.net/{api}/score",
              "ipAddress": "203.0.113.7", "backendResponseCode": str(status),
              "responseCode": status, "responseSize": 120,
              "timestamp": when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
              "cache": "none", "apiTime": latency_ms, "serviceTime": latency_ms * 0.8,
              "apiRegion": "West Europe", "subscriptionId": "/subscriptions/-",
              "requestId": str(uuid.uuid4()), "requestSize": 256}
    fake.apim_requests.append(record)  # type: ignore[attr-defined]
    return record


__all__ = ["ARM", "KNOWN_POLICY_ELEMENTS", "ApimFake", "gateway_view", "install",
           "named_value", "report_call", "seed_service", "service_id", "state",
           "validation_error"]
