"""Changes to the local gateway's config.json, made under one lock so jobs never lose updates.

Deploy (backend URL + key flip), key rotation (key only) and publish (API revisions) all
change the same file. Each change is a read-modify-write under an exclusive file lock, then
an atomic replace that the running gateway picks up within a second. The backend URL and its
key change in ONE write, so the gateway never pairs a new backend with an old key (the seed's
401 window).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.gateway.config import (
    check_api,
    default_config_path,
    encrypt_named_value,
    write_gateway_config,
)
from app.gateway.template import (
    ISSUER_URL_NAME,
    adopt_issuer_url_name,
    backend_key_name,
    backend_url_name,
)

__all__ = ["backend_key_name", "backend_url_name", "read", "set_backend", "set_backend_key",
           "set_issuer_url", "update", "upsert_api", "remove_api"]

Mutation = Callable[[dict[str, Any]], None]


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    lock_path = default_config_path(home).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
