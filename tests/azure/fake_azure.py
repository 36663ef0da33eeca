"""An in-memory Azure that answers the SDKs' own requests like the Azure REST APIs.

``FakeAzure.transport()`` is an azure-core ``HttpTransport``; every client of the azure backend
is built with it (``transport=``, ``polling_interval=0``), so the SDKs build their real
requests, poll their real long-running operations and map errors as they do against Azure.

What it does, like Azure Resource Manager (shapes after the response examples in
azure-rest-api-specs, ``specification/*/resource-manager/*/stable/*/examples``):
- PUT creates or updates a resource by its ARM id (201 new, 200 existing), answers the
  resource with ``provisioningState`` Creating/Updating and an ``Azure-AsyncOperation`` header;
  the operation answers ``InProgress`` ``lro_polls`` times, then ``Succeeded`` (or ``Failed``
  with the resource's own error, see :meth:`FakeAzure.fail_provisioning`);
- GET answers the resource, a collection (``{"value": [...]}``), or 404 with an ARM error;
- PATCH merges, DELETE answers 202 + ``Location`` then 204 (a missing resource: 204);
- POST actions (``listKeys``, ``regenerateKeys``…) and other hosts (Azure ML's data plane)
  answer through routes that the area modules (``tests/azure/fakes_*.py``) register;
- faults queued with :meth:`FakeAzure.fail` answer first (409, 429 with Retry-After, 500…).

An unknown request fails the test with AssertionError naming it: nothing is answered by
accident. Every request is recorded (method, URL, api-version, JSON body) for assertions.
"""

from __future__ import annotations

import copy
import importlib
import io
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from azure.core.rest import HttpRequest as RestHttpRequest
from azure.core.rest._requests_basic import RestRequestsTransportResponse
from requests.structures import CaseInsensitiveDict

ARM = "https://management.azure.com"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "11111111-2222-3333-4444-555555555555"


@dataclass(frozen=True)
class Recorded:
    """One request as the SDK sent it."""

    method: str
    url: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, raw text, or None

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")


@dataclass
class Answer:
    """What the fake answers: status, JSON body (or raw bytes), headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    answer: Answer
    times: int


Handler = Callable[["FakeAzure", Recorded, re.Match[str]], Answer]


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None
              ) -> Answer:
    """An ARM error answer (``{"error": {"code", "message"}}``)."""
    return Answer(status, {"error": {"code": code, "message": message}}, headers or {})


class FakeCredential:
    """A TokenCredential that hands out a fixed token (the SDKs only call ``get_token``)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("fake-arm-token", int(time.time()) + 3600)

    def close(self) -> None:
        pass


class FakeAzure:
    """The in-memory Azure; one per test."""

    def __init__(self, *, lro_polls: int = 1) -> None:
        self.lro_polls = lro_polls
        self.resources: dict[str, dict[str, Any]] = {}  # lower-case ARM id -> resource
        self.requests: list[Recorded] = []
        self.sleeps: list[float] = []
        self._faults: list[_Fault] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._on_put: list[tuple[re.Pattern[str], Callable[..., dict[str, Any]]]] = []
        self._operations: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ set-up

    def install_areas(self) -> FakeAzure:
        """Let every ``tests/azure/fakes_*.py`` register its routes and resource hooks
        (each has ``install(fake)``)."""
        for path in sorted(Path(__file__).parent.glob("fakes_*.py")):
            importlib.import_module(f"tests.azure.{path.stem}").install(self)
        return self

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register a handler for requests whose full URL (without query) matches
        ``pattern`` (a regex, case-insensitive, searched)."""
        def register(handler: Handler) -> Handler:
            self._routes.append((method.upper(), re.compile(pattern, re.I), handler))
            return handler
        return register

    def on_put(self, type_pattern: str, hook: Callable[..., dict[str, Any]]) -> None:
        """``hook(fake, resource_id, body, existing) -> stored resource`` for PUTs whose ARM
        id matches ``type_pattern``: fills in what Azure adds (principal ids, FQDNs, URIs)."""
        self._on_put.append((re.compile(type_pattern, re.I), hook))

    def fail(self, method: str, pattern: str, status: int, code: str = "", message: str = "",
             *, headers: dict[str, str] | None = None, times: int = 1,
             body: Any = None) -> None:
        """Answer the next ``times`` matching requests with an error instead."""
        answer = (Answer(status, body, headers or {}) if body is not None or not code
                  else arm_error(status, code, message, headers))
        self._faults.append(_Fault(method.upper(), re.compile(pattern, re.I), answer, times))

    def fail_provisioning(self, id_pattern: str, code: str, message: str) -> None:
        """Make the next long-running PUT of a matching resource end ``Failed``."""
        self._failures[id_pattern] = (code, message)

    def finish_operations(self) -> None:
        """Let every long-running operation under way end at its next poll."""
        with self._lock:
            for op in self._operations.values():
                op["polls"] = 0

    # ------------------------------------------------------------------ state

    def put_resource(self, resource_id: str, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a resource as Azure would hold it (tests seed existing resources with it)."""
        stored = copy.deepcopy(resource)
        stored.setdefault("id", resource_id)
        stored.setdefault("name", resource_id.rstrip("/").rsplit("/", 1)[-1])
        stored.setdefault("type", arm_type(resource_id))
        with self._lock:
            self.resources[resource_id.lower()] = stored
        return stored

    def get(self, resource_id: str) -> dict[str, Any] | None:
        """The stored resource, or None."""
        return self.resources.get(resource_id.lower().rstrip("/"))

    def calls(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        """Recorded requests, filtered by method and a regex searched in the URL path."""
        rx = re.compile(pattern, re.I)
        return [r for r in self.requests
                if (method is None or r.method == method.upper()) and rx.search(r.path)]

    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    # ------------------------------------------------------------------ answering

    def answer(self, request: Recorded) -> Answer:
        with self._lock:
            self.requests.append(request)
            for fault in self._faults:
                if fault.times > 0 and fault.method in (request.method, "*") and \
                        fault.pattern.search(request.url.split("?")[0]):
                    fault.times -= 1
                    return fault.answer
            for method, pattern, handler in self._routes:
                match = pattern.search(request.url.split("?")[0])
                if match and method in (request.method, "*"):
                    return handler(self, request, match)
            if urlsplit(request.url).netloc.lower() != "management.azure.com":
                raise AssertionError(f"the fake Azure has no route for {request.method} "
                                     f"{request.url}")
            if "/providers/fake.operations/" in request.path.lower():
                return self._operation_status(request.path)
            handler_for_method = {"PUT": self._arm_put, "GET": self._arm_get,
                                  "PATCH": self._arm_patch, "DELETE": self._arm_delete}
            if request.method not in handler_for_method:
                raise AssertionError(f"the fake Azure has no route for {request.method} "
                                     f"{request.url}")
            return handler_for_method[request.method](request)

    def _arm_put(self, request: Recorded) -> Answer:
        resource_id = request.path.rstrip("/")
        existing = self.get(resource_id)
        body = copy.deepcopy(request.body) if isinstance(request.body, dict) else {}
        stored = {**body, "id": resource_id, "name": resource_id.rsplit("/", 1)[-1],
                  "type": arm_type(resource_id)}
        for pattern, hook in self._on_put:
            if pattern.search(resource_id):
                stored = hook(self, resource_id, stored, existing)
        failure = next((f for p, f in self._failures.items() if re.search(p, resource_id, re.I)),
                       None)
        final_state = "Failed" if failure else "Succeeded"
        stored.setdefault("properties", {})["provisioningState"] = final_state
        self.put_resource(resource_id, stored)
        answered = copy.deepcopy(stored)
        headers: dict[str, str] = {}
        if self.lro_polls > 0 or failure:
            answered["properties"]["provisioningState"] = "Updating" if existing else "Creating"
            headers["Azure-AsyncOperation"] = self._new_operation(request, failure)
        if failure:
            self._failures = {p: f for p, f in self._failures.items() if f is not failure}
        return Answer(200 if existing else 201, answered, headers)

    def _arm_get(self, request: Recorded) -> Answer:
        path = request.path.rstrip("/")
        if is_collection(path):
            prefix = path.lower() + "/"
            items = [r for key, r in self.resources.items()
                     if key.startswith(prefix) and "/" not in key[len(prefix):]]
            return Answer(200, {"value": items})
        resource = self.get(path)
        if resource is None:
            return not_found(path)
        return Answer(200, resource)

    def _arm_patch(self, request: Recorded) -> Answer:
        resource = self.get(request.path)
        if resource is None:
            return not_found(request.path)
        merged = deep_merge(resource, request.body if isinstance(request.body, dict) else {})
        self.put_resource(request.path.rstrip("/"), merged)
        return Answer(200, merged)

    def _arm_delete(self, request: Recorded) -> Answer:
        key = request.path.lower().rstrip("/")
        if key not in self.resources:
            return Answer(204)
        for child in [k for k in self.resources if k == key or k.startswith(key + "/")]:
            del self.resources[child]
        if self.lro_polls > 0:
            return Answer(202, None, {"Location": self._new_operation(request, None),
                                      "Retry-After": "0"})
        return Answer(200)

    def _new_operation(self, request: Recorded, failure: tuple[str, str] | None) -> str:
        op_id = f"op{next(self._ids):05d}"
        self._operations[op_id] = {"polls": self.lro_polls, "failure": failure,
                                   "method": request.method}
        version = request.api_version or "2023-01-01"
        return (f"{ARM}/subscriptions/{SUBSCRIPTION}/providers/Fake.Operations/"
                f"operations/{op_id}?api-version={version}")

    def _operation_status(self, path: str) -> Answer:
        op_id = path.rstrip("/").rsplit("/", 1)[-1]
        op = self._operations.get(op_id)
        if op is None:
            return not_found(path)
        if op["polls"] > 0:
            op["polls"] -= 1
            return Answer(200, {"name": op_id, "status": "InProgress"}, {"Retry-After": "0"})
        if op["failure"]:
            code, message = op["failure"]
            return Answer(200, {"name": op_id, "status": "Failed",
                                "error": {"code": code, "message": message}})
        if op["method"] == "DELETE":  # a Location poll of a finished delete
            return Answer(204)
        return Answer(200, {"name": op_id, "status": "Succeeded"})


class FakeTransport(HttpTransport):
    """The azure-core transport that hands each request to a FakeAzure."""

    def __init__(self, fake: FakeAzure) -> None:
        self.fake = fake

    def __enter__(self) -> FakeTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def sleep(self, duration: float) -> None:
        self.fake.sleeps.append(duration)  # retries after 429 wait for nothing

    def send(self, request: Any, **kwargs: Any) -> Any:
        recorded = _record(request)
        answer = self.fake.answer(recorded)
        response = requests.Response()
        response.status_code = answer.status
        response.reason = _REASONS.get(answer.status, "")
        content = answer.content()
        response._content = content
        response.raw = io.BytesIO(content)
        headers = {"x-ms-request-id": str(uuid.uuid4()), **answer.headers}
        if answer.body is not None and not isinstance(answer.body, bytes):
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        response.headers = CaseInsensitiveDict(headers)
        response.url = recorded.url
        response.encoding = "utf-8"
        if isinstance(request, RestHttpRequest):
            rest = RestRequestsTransportResponse(request=request, internal_response=response)
            if not kwargs.get("stream"):
                rest.read()  # as azure-core's RequestsTransport does for non-streamed requests
            return rest
        return RequestsTransportResponse(request, response)


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            412: "Precondition Failed", 429: "Too Many Requests", 500: "Internal Server Error"}


def _record(request: Any) -> Recorded:
    url = str(request.url)
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    raw = getattr(request, "content", None)
    if raw is None:
        raw = getattr(request, "body", None) or getattr(request, "data", None)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    body: Any = raw
    if isinstance(raw, str) and raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
    elif not raw:
        body = None
    return Recorded(request.method.upper(), url, parts.path, query,
                    {k.lower(): str(v) for k, v in request.headers.items()}, body)


# --------------------------------------------------------------------------- helpers


def arm_type(resource_id: str) -> str:
    """``Microsoft.Network/virtualNetworks/subnets`` for a subnet's id."""
    parts = resource_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if "providers" not in lowered:
        return "Microsoft.Resources/resourceGroups"
    at = len(lowered) - 1 - lowered[::-1].index("providers")
    namespace, rest = parts[at + 1], parts[at + 2:]
    return "/".join([namespace, *rest[0::2]])


def is_collection(path: str) -> bool:
    """Whether an ARM path names a collection (``…/virtualNetworks``) rather than one
    resource (``…/virtualNetworks/vnet``)."""
    parts = path.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if "providers" not in lowered:
        return len(parts) % 2 == 1  # /subscriptions/s/resourceGroups[/rg]
    at = len(lowered) - 1 - lowered[::-1].index("providers")
    return len(parts[at + 2:]) % 2 == 1


def not_found(path: str) -> Answer:
    kind = arm_type(path).rsplit("/", 1)[-1]
    return arm_error(404, "ResourceNotFound",
                     f"The Resource '{arm_type(path)}/{path.rsplit('/', 1)[-1]}' under resource "
                     f"group was not found ({kind}).")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def rg_id(resource_group: str = "modelgate-rg") -> str:
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{resource_group}"
