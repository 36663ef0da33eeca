"""The default policy template (default-policy.xml) and its renderer."""

from __future__ import annotations

import os
from importlib import resources
from string import Template
from xml.sax.saxutils import escape

DEFAULT_AUDIENCE = "api://modelgate"
DEFAULT_ROLE = "Score.Invoke"
DEFAULT_RATE_LIMIT = 6000


def backend_url_name(environment: str) -> str:
    """Named value holding an environment's recorded backend base URL (the deploy job's)."""
    return f"{environment}-backend-url"


def backend_key_name(environment: str) -> str:
    """Secret named value holding the key the gateway presents to an environment's backend."""
    return f"{environment}-backend-key"


def default_rate_limit() -> int:
    """MODELGATE_RATE_LIMIT calls per minute per caller (default 6000)."""
    raw = os.environ.get("MODELGATE_RATE_LIMIT", "").strip()
    if not raw:
        return DEFAULT_RATE_LIMIT
    value = int(raw)
    if value < 1:
        raise ValueError("MODELGATE_RATE_LIMIT must be a positive integer")
    return value


def render_default_policy(
    *,
    issuer: str,
    environment: str,
    audience: str = DEFAULT_AUDIENCE,
    role: str = DEFAULT_ROLE,
    rate_limit: int | None = None,
    clock_skew_s: int = 0,
    key_name: str | None = None,
    url_name: str | None = None,
) -> str:
    """Fill the default policy: issuer, audience, role, per-caller limit, backend named values.

    The backend key and URL come from named values, by default ``<environment>-backend-key``
    (secret) and ``<environment>-backend-url``, which the publish job must write alongside.
    """
    issuer = issuer.rstrip("/")
    values = {
        "issuer": issuer,
        "openid_config_url": f"{issuer}/.well-known/openid-configuration",
        "audience": audience,
        "role": role,
        "rate_limit": str(rate_limit if rate_limit is not None else default_rate_limit()),
        "clock_skew": str(int(clock_skew_s)),
        "backend_key_name": key_name or backend_key_name(environment),
        "backend_url_name": url_name or backend_url_name(environment),
    }
    text = resources.files("app.gateway").joinpath("default-policy.xml").read_text("utf-8")
    safe = {k: escape(v, {'"': "&quot;", "'": "&apos;"}) for k, v in values.items()}
    return Template(text).substitute(safe)
