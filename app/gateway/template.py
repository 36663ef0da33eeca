"""The default policy template (default-policy.xml) and its renderer."""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping, Sequence
from importlib import resources
from string import Template
from xml.sax.saxutils import escape

DEFAULT_AUDIENCE = "api://modelgate"
DEFAULT_ROLE = "Score.Invoke"
DEFAULT_RATE_LIMIT = 6000
#: The named value holding the token issuer's URL. Policies the panel renders name it instead
#: of a literal URL (as on API Management), and whoever starts the stack sets it, so restarting
#: the issuer on another port re-points every published policy.
ISSUER_URL_NAME = "issuer-url"
ISSUER_URL_REF = "{{" + ISSUER_URL_NAME + "}}"
_CALLS = re.compile(r'<rate-limit-by-key calls="([0-9]{1,9})"')
# One <audience> per line, indented as in default-policy.xml (one audience renders the same
# bytes as before the template took several).
_AUDIENCE_SEPARATOR = "\n        "
_XML_ATTR = {'"': "&quot;", "'": "&apos;"}


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
    audience: str | Sequence[str] = DEFAULT_AUDIENCE,
    role: str = DEFAULT_ROLE,
    rate_limit: int | None = None,
    clock_skew_s: int = 0,
    key_name: str | None = None,
    url_name: str | None = None,
) -> str:
    """Fill the default policy: issuer, audience, role, per-caller limit, backend named values.

    The backend key and URL come from named values, by default ``<environment>-backend-key``
    (secret) and ``<environment>-backend-url``, which the publish job must write alongside.
    ``issuer`` is a URL or ISSUER_URL_REF (the panel's choice: the ``issuer-url`` named value).
    ``audience`` is one audience or several, each accepted (Entra ID: ``api://<app id>`` and
    the bare application id, the two forms its access tokens carry).
    """
    issuer = issuer.rstrip("/")
    audiences = [audience] if isinstance(audience, str) else list(audience)
    if not audiences or not all(audiences):
        raise ValueError("the default policy needs at least one non-empty audience")
    values = {
        "issuer": issuer,
        "openid_config_url": f"{issuer}/.well-known/openid-configuration",
        "role": role,
        "rate_limit": str(rate_limit if rate_limit is not None else default_rate_limit()),
        "clock_skew": str(int(clock_skew_s)),
        "backend_key_name": key_name or backend_key_name(environment),
        "backend_url_name": url_name or backend_url_name(environment),
    }
    text = resources.files("app.gateway").joinpath("default-policy.xml").read_text("utf-8")
    safe = {k: escape(v, _XML_ATTR) for k, v in values.items()}
    safe["audiences"] = _AUDIENCE_SEPARATOR.join(
        f"<audience>{escape(a, _XML_ATTR)}</audience>" for a in audiences)
    return Template(text).substitute(safe)


def adopt_issuer_url_name(api: MutableMapping[str, object]) -> bool:
    """Turn a published API that modelgate rendered with a literal issuer URL into one that
    names ISSUER_URL_REF (policy and recorded issuer); return whether it changed.

    Only a policy byte-identical to the default policy rendered for its recorded issuer,
    environment, audience and rate limit is rewritten: a policy someone wrote is left as it is.
    """
    issuer, policy = api.get("issuer"), api.get("policy_xml")
    if not (isinstance(issuer, str) and issuer.startswith("https://")
            and isinstance(policy, str)):
        return False
    calls = _CALLS.search(policy)
    audience = api.get("audience")

    def render(issuer_text: str) -> str:
        return render_default_policy(
            issuer=issuer_text, environment=str(api.get("environment", "")),
            audience=audience if isinstance(audience, str) else DEFAULT_AUDIENCE,
            rate_limit=int(calls.group(1)) if calls else None)

    if render(issuer) != policy:
        return False
    api["policy_xml"] = render(ISSUER_URL_REF)
    api["issuer"] = ISSUER_URL_REF
    return True
