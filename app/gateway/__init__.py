"""The local API gateway that executes API Management policies (its own app factory).

Import what you need from its modules: app.gateway.app (create_gateway_app, serve),
app.gateway.config, app.gateway.policy, app.gateway.template.
"""

from __future__ import annotations


def compiled() -> list[str]:
    """The gateway modules that run as compiled extension modules (the optional Cython build,
    app/gateway/compile.py): for each, the one imported, or the one an import would find.

    Empty: every module runs as pure Python (the default install, and the fallback).
    """
    from importlib.machinery import EXTENSION_SUFFIXES
    from importlib.util import find_spec

    from app.gateway.compile import MODULES

    found = (find_spec(f"{__name__}.{name}") for name in MODULES)
    return [name for name, spec in zip(MODULES, found, strict=True)
            if spec is not None and (spec.origin or "").endswith(tuple(EXTENSION_SUFFIXES))]


def flavour() -> str:
    """One line for the start-up log: which gateway modules run compiled, if any."""
    names = compiled()
    return f"compiled with Cython: {', '.join(names)}" if names else "pure Python"
