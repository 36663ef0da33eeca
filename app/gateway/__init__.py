"""modelgate.gateway: the local API gateway that executes API Management policies.

Entry points are imported lazily so that importing the package has no side effects and
does not pull the server stack into processes that only need the config helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.gateway.app import create_gateway_app, serve
    from app.gateway.config import encrypt_named_value, write_gateway_config
    from app.gateway.policy import PolicyError, compile_policy
    from app.gateway.template import render_default_policy

__all__ = ["PolicyError", "compile_policy", "create_gateway_app", "encrypt_named_value",
           "render_default_policy", "serve", "write_gateway_config"]

_WHERE = {"create_gateway_app": "app", "serve": "app", "encrypt_named_value": "config",
          "write_gateway_config": "config", "PolicyError": "policy", "compile_policy": "policy",
          "render_default_policy": "template"}


def __getattr__(name: str) -> Any:
    """Import public names on first use."""
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"app.gateway.{_WHERE[name]}"), name)
