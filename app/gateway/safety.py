"""The rules a compiled policy must meet before the gateway serves it (checked at publish,
rollback and every config load), so no policy can send the backend key to a host nobody chose
or serve callers without a validated token carrying the scoring role.

* **Backend**: every ``set-backend-service`` base-url points at the API environment's recorded
  backend (the ``<environment>-backend-url`` named value the deploy job writes: same scheme,
  host and port), or over https at a host listed in the pipeline file's
  ``gateway.allowed_backends`` (``host`` or ``host:port``).
* **Authentication**: unless the pipeline file lists the API in ``gateway.anonymous_apis``,
  some ``validate-jwt`` in ``<inbound>``, before any ``return-response``, carries
  ``<required-claims><claim name="roles">`` that only a token holding ``Score.Invoke`` can
  satisfy: ``match="all"`` with ``Score.Invoke`` among its values, or ``match="any"`` with
  ``Score.Invoke`` as its only value. When the API's trusted issuer and audience are known
  (publishing records them), that validate-jwt must also take its keys from the issuer's
  discovery document only (``<openid-config url="{issuer}/.well-known/openid-configuration">``)
  and accept no other issuer, and no audience but the API's (one, or several: Entra ID's
  access tokens carry ``api://<app id>`` or the bare application id). Every validate-jwt
  already needs signed tokens and ``<audiences>`` (policy.py).
* **Token type**: the API's tokens must carry the ``typ`` publishing recorded, ``at+jwt``
  unless recorded otherwise. ``JWT`` (Entra ID's access tokens) is taken only for an API whose
  recorded issuer has Entra ID's v2 form, ``https://<host>/<tenant>/v2.0``, so the local
  issuer's APIs never accept anything but ``at+jwt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from app.gateway.plan import (
    ClaimMatch,
    Policy,
    ReturnResponse,
    SetBackendService,
    UnsafePolicy,
    ValidateJwt,
)
from app.gateway.template import DEFAULT_ROLE
from app.gateway.token_rules import ACCESS_TOKEN_TYPE

_HOST_ENTRY = re.compile(r"^(?:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])"
                         r"(?::[0-9]{1,5})?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ENTRA_V2_ISSUER = re.compile(r"^https://[^/?#]+/[^/?#]+/v2\.0$")


@dataclass(frozen=True)
class ServingRules:
    """What one API's policy is checked against."""

    environment: str
    recorded_backend: str | None
    allowed_backends: tuple[str, ...] = ()
    anonymous: bool = False
    issuer: str | None = None
    audience: str | None = None
    # further accepted audiences (the API's audience forms); with ``audience`` the whole set
    audiences: tuple[str, ...] = ()
    # the JOSE typ its access tokens carry (token_rules.ACCESS_TOKEN_TYPES)
    access_token_type: str = ACCESS_TOKEN_TYPE

    @property
    def accepted_audiences(self) -> frozenset[str] | None:
        """Every audience the API's tokens may carry, None when unknown."""
        known = {*self.audiences, *([self.audience] if self.audience else [])}
        return frozenset(known) if known else None


def valid_backend_entry(entry: str) -> bool:
    """Whether an allowed_backends entry is a lower-case ``host`` or ``host:port``."""
    return bool(_HOST_ENTRY.match(entry))


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


def _listed(parts: SplitResult, allowed: tuple[str, ...]) -> bool:
    """An https URL whose host (and port, when the entry gives one) an entry names."""
    if parts.scheme != "https":
        return False
    _, host, port = _origin(parts)
    netloc = f"[{host}]" if ":" in host else host
    return any(entry in (netloc, f"{netloc}:{port}") for entry in allowed)


def _check_backends(policy: Policy, rules: ServingRules) -> None:
    recorded = _origin(urlsplit(rules.recorded_backend)) if rules.recorded_backend else None
    for step in policy.inbound:
        if not isinstance(step, SetBackendService):
            continue
        parts = urlsplit(step.base_url)
        if _origin(parts) == recorded or _listed(parts, rules.allowed_backends):
            continue
        raise UnsafePolicy(
            f"inbound/set-backend-service/@base-url points at {parts.scheme}://{parts.netloc}, "
            f"which is neither the recorded backend of the {rules.environment} environment "
            f"({rules.environment}-backend-url) nor an https host listed in "
            "gateway.allowed_backends of the pipeline file")


def _requires_role(step: ValidateJwt) -> bool:
    for claim in step.required_claims:
        if claim.name != "roles" or not claim.values:
            continue
        if claim.match is ClaimMatch.ALL and DEFAULT_ROLE in claim.values:
            return True
        if claim.match is ClaimMatch.ANY and set(claim.values) == {DEFAULT_ROLE}:
            return True
    return False


def _trusts_only(step: ValidateJwt, rules: ServingRules) -> bool:
    if rules.issuer is not None:
        discovery = f"{rules.issuer.rstrip('/')}/.well-known/openid-configuration"
        if set(step.openid_config_urls) != {discovery}:
            return False
        if not set(step.issuers) <= {rules.issuer.rstrip("/")}:
            return False
    accepted = rules.accepted_audiences
    return accepted is None or set(step.audiences) <= accepted


def _check_authentication(policy: Policy, rules: ServingRules) -> None:
    for step in policy.inbound:
        if isinstance(step, ReturnResponse):
            break
        if isinstance(step, ValidateJwt) and _requires_role(step) and _trusts_only(step, rules):
            return
    audiences = " or ".join(sorted(rules.accepted_audiences or ()))
    trusted = f" from {rules.issuer} for {audiences}" if rules.issuer else ""
    raise UnsafePolicy(
        f"inbound has no validate-jwt checking tokens{trusted} with <required-claims><claim "
        f"name=\"roles\"> requiring {DEFAULT_ROLE} before it can answer or forward, so it "
        "would serve anonymous callers; list the API in gateway.anonymous_apis of the "
        "pipeline file to publish it without one")


def _check_token_type(rules: ServingRules) -> None:
    if rules.access_token_type == ACCESS_TOKEN_TYPE:
        return
    if rules.issuer is None or not _ENTRA_V2_ISSUER.match(rules.issuer.rstrip("/")):
        raise UnsafePolicy(
            f"access_token_type {rules.access_token_type!r} is Entra ID's access-token type, "
            f"but the API's recorded issuer ({rules.issuer or 'none'}) is not an Entra ID v2 "
            f"issuer (https://<host>/<tenant>/v2.0); other issuers' tokens are "
            f"{ACCESS_TOKEN_TYPE!r}")


def check_policy(policy: Policy, rules: ServingRules) -> None:
    """Raise UnsafePolicy naming the element unless the policy meets the serving rules."""
    _check_token_type(rules)
    _check_backends(policy, rules)
    if not rules.anonymous:
        _check_authentication(policy, rules)
