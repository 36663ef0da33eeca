"""Gateway configuration (MODELGATE_HOME/gateway/config.json) and encrypted named values.

Format: docs/internal-contracts.md "Gateway configuration". Writers replace the file atomically
with write_gateway_config, which refuses a configuration whose policies do not compile, so
publishing fails loudly instead of the gateway silently skipping a policy. A policy that
compiles but is unsafe (UnsafePolicy) does not stop the rest of the file: that API is loaded
as refused and answers 503, and publishing checks its API first with check_api.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken

from app.gateway.policy import NamedValue, Policy, PolicyError, UnsafePolicy, compile_policy
from app.gateway.safety import ServingRules, check_policy, valid_backend_entry
from app.gateway.template import backend_url_name
from app.gateway.token_rules import ACCESS_TOKEN_TYPE, ACCESS_TOKEN_TYPES
from app.keyfiles import load_or_create_fernet

log = logging.getLogger(__name__)

_PATH = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}(/[a-z0-9][a-z0-9-]{0,62}){0,3}$")
_TEMPLATE = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")
_WHOLE_REFERENCE = re.compile(r"^\{\{([A-Za-z0-9._-]{1,256})\}\}$")
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
_REFUSED_POLICY = Policy((), None, (), (), ())


class ConfigError(ValueError):
    """The gateway configuration is invalid (message names the offending part)."""


@dataclass(frozen=True)
class Operation:
    """One operation of an API."""

    id: str
    method: str
    url_template: str


@dataclass(frozen=True)
class ApiRevision:
    """A published API revision with its compiled policy (or why it is refused: 503), and the
    JOSE ``typ`` its validate-jwt steps require of access tokens."""

    name: str
    path: str
    revision: int
    environment: str
    backend_url: str
    operations: tuple[Operation, ...]
    policy: Policy
    refusal: str | None = None
    access_token_type: str = ACCESS_TOKEN_TYPE


@dataclass(frozen=True)
class Route:
    """What a (method, path) resolves to."""

    api: ApiRevision
    operation: Operation


@dataclass(frozen=True)
class GatewayConfig:
    """A loaded configuration: APIs and the route table."""

    apis: tuple[ApiRevision, ...]
    routes: Mapping[tuple[str, str], Route]
    paths: frozenset[str]

    @classmethod
    def empty(cls) -> GatewayConfig:
        """No APIs published yet."""
        return cls((), MappingProxyType({}), frozenset())


def gateway_dir(home: Path) -> Path:
    """MODELGATE_HOME/gateway."""
    return Path(home) / "gateway"


def default_config_path(home: Path) -> Path:
    """MODELGATE_HOME/gateway/config.json."""
    return gateway_dir(home) / "config.json"


def _fernet(home: Path) -> Fernet:
    """The instance's Fernet key for secret named values (gateway/secret.key, 0600)."""
    return load_or_create_fernet(gateway_dir(home) / "secret.key")


def encrypt_named_value(home: Path, plaintext: str) -> str:
    """Encrypt a secret named value for config.json."""
    return _fernet(home).encrypt(plaintext.encode("utf-8")).decode("ascii")


def _named_values(home: Path, raw: Any) -> dict[str, NamedValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("named_values must be an object")
    out: dict[str, NamedValue] = {}
    fernet: Fernet | None = None
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
            raise ConfigError(f"named value {name!r} needs a string 'value'")
        secret = bool(entry.get("secret", False))
        value = entry["value"]
        if secret:
            fernet = fernet or _fernet(home)
            try:
                value = fernet.decrypt(value.encode("ascii")).decode("utf-8")
            except (InvalidToken, UnicodeError):
                raise ConfigError(f"secret named value {name!r} cannot be decrypted with "
                                  "gateway/secret.key") from None
        out[str(name)] = NamedValue(value, secret)
    return out


def _operation(raw: Any, api: str) -> Operation:
    if not isinstance(raw, dict):
        raise ConfigError(f"api {api!r}: operations must be objects")
    method = str(raw.get("method", "")).upper()
    template = str(raw.get("url_template", ""))
    if method not in _METHODS:
        raise ConfigError(f"api {api!r}: unsupported method {method!r}")
    if not _TEMPLATE.match(template) or "//" in template or "/../" in template + "/":
        raise ConfigError(f"api {api!r}: invalid url_template {template!r}")
    return Operation(str(raw.get("id", template.strip("/"))), method, template)


def _api(raw: Any, named: Mapping[str, NamedValue]) -> ApiRevision:
    if not isinstance(raw, dict):
        raise ConfigError("apis must be a list of objects")
    name = str(raw.get("name", ""))
    path = str(raw.get("path", ""))
    if not _PATH.match(path):
        raise ConfigError(f"api {name!r}: invalid path {path!r}")
    backend = str(raw.get("backend_url", ""))
    parts = urlsplit(backend)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"api {name!r}: backend_url must be an absolute http(s) URL")
    ops = raw.get("operations")
    if not isinstance(ops, list) or not ops:
        raise ConfigError(f"api {name!r}: needs at least one operation")
    revision = raw.get("revision", 1)
    if not isinstance(revision, int) or isinstance(revision, bool):
        raise ConfigError(f"api {name!r}: revision must be an integer")
    rules = _serving_rules(raw, name, named)
    refusal: str | None = None
    try:
        policy = compile_policy(str(raw.get("policy_xml", "<policies/>")), named)
        check_policy(policy, rules)
    except UnsafePolicy as exc:
        policy, refusal = _REFUSED_POLICY, f"api {name!r} revision {revision}: {exc}"
    except PolicyError as exc:
        raise ConfigError(f"api {name!r} revision {revision}: {exc}") from None
    return ApiRevision(name, path, revision, str(raw.get("environment", "")),
                       backend.rstrip("/"), tuple(_operation(o, name) for o in ops), policy,
                       refusal, rules.access_token_type)


def _resolve(value: str | None, named: Mapping[str, NamedValue], where: str) -> str | None:
    """A recorded issuer or audience that is exactly one ``{{name}}`` reads that named value
    (the panel records ``{{issuer-url}}``, as its policies name it)."""
    match = _WHOLE_REFERENCE.match(value or "")
    if match is None:
        return value
    entry = named.get(match.group(1))
    if entry is None or entry.secret:
        raise ConfigError(f"{where} names {{{{{match.group(1)}}}}}, which is not a plain "
                          "named value of this configuration")
    return entry.value


def _serving_rules(raw: Mapping[str, Any], name: str,
                   named: Mapping[str, NamedValue]) -> ServingRules:
    """The API's serving rules: its environment's recorded backend and what publishing wrote."""
    environment = str(raw.get("environment", ""))
    anonymous = raw.get("anonymous", False)
    if not isinstance(anonymous, bool):
        raise ConfigError(f"api {name!r}: anonymous must be true or false")
    allowed = raw.get("allowed_backends", [])
    if not isinstance(allowed, list) or not all(
            isinstance(e, str) and valid_backend_entry(e) for e in allowed):
        raise ConfigError(f"api {name!r}: allowed_backends must be a list of host or host:port")
    identity = {}
    for key in ("issuer", "audience"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(f"api {name!r}: {key} must be a non-empty string")
        identity[key] = _resolve(value, named, f"api {name!r}: {key}")
    audiences = raw.get("audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise ConfigError(f"api {name!r}: audiences must be a list of non-empty strings")
    # absent: at+jwt (documents published before the type was recorded)
    token_type = raw.get("access_token_type", ACCESS_TOKEN_TYPE)
    if token_type not in ACCESS_TOKEN_TYPES:
        raise ConfigError(f"api {name!r}: access_token_type must be one of "
                          f"{', '.join(ACCESS_TOKEN_TYPES)}")
    recorded = named.get(backend_url_name(environment))
    return ServingRules(environment, recorded.value if recorded else None, tuple(allowed),
                        anonymous, identity["issuer"], identity["audience"], tuple(audiences),
                        token_type)


def parse_config(home: Path, data: Any) -> GatewayConfig:
    """Validate and compile a config object; raise ConfigError naming the problem."""
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object")
    unknown = set(data) - {"apis", "named_values"}
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(unknown)}")
    named = _named_values(home, data.get("named_values"))
    apis_raw = data.get("apis", [])
    if not isinstance(apis_raw, list):
        raise ConfigError("apis must be a list")
    apis = tuple(_api(a, named) for a in apis_raw)
    routes: dict[tuple[str, str], Route] = {}
    for api in apis:
        for op in api.operations:
            key = (op.method, f"/{api.path}{op.url_template}")
            if key in routes:
                raise ConfigError(f"duplicate route {key[0]} {key[1]}")
            routes[key] = Route(api, op)
    return GatewayConfig(apis, MappingProxyType(routes),
                         frozenset(path for _, path in routes))


def load_config(home: Path, path: Path) -> GatewayConfig:
    """Read and compile config.json (missing file = no APIs)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return GatewayConfig.empty()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"config.json is not valid JSON: {exc}") from None
    config = parse_config(home, data)
    for api in config.apis:
        if api.refusal is not None:
            log.error("gateway refuses to serve %s (answering 503): %s", api.name, api.refusal)
    return config


def check_revision(api: Mapping[str, Any], named_values: Mapping[str, NamedValue]) -> None:
    """Raise ConfigError, PolicyError or UnsafePolicy naming the problem unless one API
    document (as config.json holds it) compiles against these named values and meets its
    serving rules: the checks the gateway runs on load, for a gateway whose configuration is
    elsewhere (API Management: the azure backend checks before it sends the policy)."""
    api_revision = _api(dict(api), named_values)
    if api_revision.refusal is not None:
        raise UnsafePolicy(api_revision.refusal)


def check_api(home: Path, data: Mapping[str, Any], name: str) -> None:
    """Raise PolicyError naming the problem unless the document's API ``name`` would be served.

    Publishing calls this before writing, so an unsafe policy fails the job (422 on the REST
    path) instead of becoming a 503 at the gateway.
    """
    config = parse_config(home, dict(data))
    api = next((a for a in config.apis if a.name == name), None)
    if api is None:
        raise ConfigError(f"api {name!r} is not in the configuration")
    if api.refusal is not None:
        raise UnsafePolicy(api.refusal)


def write_gateway_config(home: Path, config: Mapping[str, Any], path: Path | None = None) -> Path:
    """Validate (every policy compiles) and atomically replace gateway/config.json."""
    parse_config(home, dict(config))
    target = path or default_config_path(home)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
