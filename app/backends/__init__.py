"""Backends looked up by name, imported lazily (the azure SDKs only when asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.backends.base import BackendError

if TYPE_CHECKING:
    from app.backends.base import Backend

# name -> "module:Class"; the class has ``from_config(config) -> Backend``.
_REGISTRY: dict[str, str] = {
    "local": "app.backends.local:LocalBackend",
    "azure": "app.backends.azure:AzureBackend",
}
_INSTALL_HINTS: dict[str, str] = {
    "azure": "pip install 'modelgate[azure]'",
}
# Checked before importing, so a missing SDK gives the hint rather than a deep import error.
_REQUIRES: dict[str, tuple[str, ...]] = {
    "azure": ("azure.identity", "azure.ai.ml"),
}


def register_backend(name: str, target: str) -> None:
    """Register (or replace) a backend as ``"module:Class"``."""
    _REGISTRY[name] = target


def available_backends() -> tuple[str, ...]:
    """Return the registered backend names."""
    return tuple(sorted(_REGISTRY))


def get_backend(config: Mapping[str, Any]) -> Backend:
    """Return the backend named by ``config["BACKEND"]`` (default ``local``).

    Args:
        config: the panel/worker configuration mapping (``BACKEND``, ``HOME``, …).

    Raises:
        BackendError: unknown name, or the backend's packages are not installed (the
            message says how to install them).
    """
    name = str(config.get("BACKEND") or "local").strip().lower()
    target = _REGISTRY.get(name)
    if target is None:
        raise BackendError(f"unknown backend {name!r}; choose one of "
                           f"{', '.join(available_backends())}")
    module_name, _, class_name = target.partition(":")
    missing = [m for m in _REQUIRES.get(name, ()) if not _installed(m)]
    if missing:
        raise BackendError(f"the {name} backend needs packages that are not installed "
                           f"({', '.join(missing)}); install them with: {_INSTALL_HINTS[name]}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BackendError(f"the {name} backend is not part of this version") from None
        hint = _INSTALL_HINTS.get(name, "pip install the packages it needs")
        raise BackendError(f"the {name} backend needs {exc.name!r}, which is not installed; "
                           f"install it with: {hint}") from None
    return getattr(module, class_name).from_config(config)  # type: ignore[no-any-return]


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False
