"""The local gateway's config.json and its stored API revisions, changed under one lock.

Deploy (backend URL + key flip), key rotation (key only) and publish (API revisions) all
change the same file. Each change is a read-modify-write under an exclusive file lock, then
an atomic replace that the running gateway picks up within a second. The backend URL and its
key change in ONE write, so the gateway never pairs a new backend with an old key (the seed's
401 window).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.backends.locks import file_lock
from app.gateway.config import (
    check_api,
    default_config_path,
    encrypt_named_value,
    gateway_dir,
    parse_config,
    write_gateway_config,
)
from app.gateway.template import (
    ISSUER_URL_NAME,
    adopt_issuer_url_name,
    backend_key_name,
    backend_url_name,
)

__all__ = ["backend_key_name", "backend_url_name", "backend_url", "current_revision",
           "load_revision", "read", "remove_api", "set_backend", "set_backend_key",
           "set_issuer_url", "set_named_value", "store_revision", "update", "upsert_api",
           "validate_api"]

Mutation = Callable[[dict[str, Any]], None]


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    with file_lock(default_config_path(home).with_suffix(".lock")):
        yield


def read(home: Path) -> dict[str, Any]:
    """Return the current config document (empty when nothing is published yet)."""
    path = default_config_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    data.setdefault("apis", [])
    data.setdefault("named_values", {})
    return dict(data)


def update(home: Path, mutate: Mutation) -> dict[str, Any]:
    """Apply `mutate` to the config under the lock, validate it, and replace the file."""
    with _locked(home):
        config = read(home)
        mutate(config)
        write_gateway_config(home, config)
        return config


def set_backend(home: Path, environment: str, url: str, key: str) -> None:
    """Point an environment at a backend and the key it accepts, in one atomic write."""
    secret = encrypt_named_value(home, key)

    def mutate(config: dict[str, Any]) -> None:
        named = config["named_values"]
        named[backend_url_name(environment)] = {"secret": False, "value": url}
        named[backend_key_name(environment)] = {"secret": True, "value": secret}

    update(home, mutate)


def set_backend_key(home: Path, environment: str, key: str) -> None:
    """Change only the key the gateway presents to an environment's backend."""
    secret = encrypt_named_value(home, key)

    def mutate(config: dict[str, Any]) -> None:
        config["named_values"][backend_key_name(environment)] = {"secret": True, "value": secret}

    update(home, mutate)


def set_named_value(home: Path, name: str, value: str) -> None:
    """Set a plain (not secret) named value."""

    def mutate(config: dict[str, Any]) -> None:
        config["named_values"][name] = {"secret": False, "value": value}

    update(home, mutate)


def set_issuer_url(home: Path, url: str) -> list[str]:
    """Set the ``issuer-url`` named value (at every start, and before each publish).

    APIs published before policies named it, whose policy is modelgate's default rendered with
    a literal issuer URL, are rewritten to name it; other policies are left alone. Returns the
    names of the APIs rewritten.
    """
    adopted: list[str] = []

    def mutate(config: dict[str, Any]) -> None:
        config["named_values"][ISSUER_URL_NAME] = {"secret": False, "value": url.rstrip("/")}
        adopted.extend(str(api.get("name")) for api in config["apis"]
                       if adopt_issuer_url_name(api))

    update(home, mutate)
    return adopted


def upsert_api(home: Path, api: Mapping[str, Any]) -> None:
    """Replace the API with the same name (or add it): the switch to a new revision is atomic.

    Raises:
        PolicyError: the gateway would refuse to serve this API (the message names why).
    """

    def mutate(config: dict[str, Any]) -> None:
        config["apis"] = [a for a in config["apis"] if a.get("name") != api["name"]]
        config["apis"].append(dict(api))
        check_api(home, config, str(api["name"]))

    update(home, mutate)


def remove_api(home: Path, name: str) -> None:
    """Unpublish an API (missing is fine)."""

    def mutate(config: dict[str, Any]) -> None:
        config["apis"] = [a for a in config["apis"] if a.get("name") != name]

    update(home, mutate)


def backend_url(home: Path, environment: str) -> str | None:
    """The backend URL the gateway holds for an environment, None until a deploy set it."""
    named = read(home)["named_values"]
    url = named.get(backend_url_name(environment))
    if url is None or backend_key_name(environment) not in named:
        return None
    return str(url["value"])


def _revision_path(home: Path, name: str, revision: int) -> Path:
    return gateway_dir(home) / "revisions" / name / f"{int(revision)}.json"


def validate_api(home: Path, api: Mapping[str, Any]) -> None:
    """Compile an API document against the current named values and check that the gateway
    would serve it (ConfigError / PolicyError if refused)."""
    config = read(home)
    config["apis"] = [a for a in config["apis"] if a.get("name") != api["name"]] + [dict(api)]
    parse_config(home, config)
    check_api(home, config, str(api["name"]))


def store_revision(home: Path, api: Mapping[str, Any]) -> None:
    """Keep an API revision document (its policy never changes; the rules it was last checked
    against may)."""
    path = _revision_path(home, str(api["name"]), int(api["revision"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(api), sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def load_revision(home: Path, name: str, revision: int) -> dict[str, Any] | None:
    """A stored API revision document, or None."""
    try:
        data: dict[str, Any] = json.loads(
            _revision_path(home, name, revision).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data


def current_revision(home: Path, name: str) -> int | None:
    """The revision of an API the gateway serves, or None."""
    for api in read(home)["apis"]:
        if api.get("name") == name:
            return int(api.get("revision", 0))
    return None
