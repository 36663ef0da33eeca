"""The one rule set for bearer access tokens, shared by the gateway and the panel's REST API.

Pure functions, no I/O and no Flask: the gateway (app.gateway.jwt) and the panel
(app.auth.oidc, app.auth.bearer) both call them, so a token the one refuses the other refuses
too. Signature, issuer, audience and expiry are checked by PyJWT in each caller; these rules
cover what PyJWT leaves open:

- the Authorization field: exactly one (RFC 9110 §11.6.2 defines a single credentials value;
  two fields are ambiguous, and proxies disagree on which one counts), the scheme compared
  case-insensitively (RFC 9110 §11.1), the token in JWS compact form and length-capped;
- the JOSE header: ``alg`` from a fixed allow-list (never ``none`` or HMAC), ``kid`` a short
  string, ``typ`` as the caller expects: access tokens are ``at+jwt`` (RFC 9068 §2.1, the local
  issuer's), or ``JWT`` where the caller expects Microsoft Entra ID's, which predate RFC 9068
  (the panel under identity=entra; an API published for Entra ID records it), never both;
- the key: a JWK verifies only with the algorithm it names; an RSA key naming none is an RS256
  key (PyJWT's reading, and what Entra ID and the local issuer sign with), so a PS256 token is
  never checked against a key published for RS256;
- the claims: ``exp``, ``nbf`` and ``iat`` are JSON numbers (PyJWT also takes the string
  "9999999999" or ``true``), ``sub`` a string and ``roles`` a list of strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

ALGORITHMS = ("RS256", "PS256")
MAX_TOKEN_LENGTH = 16 * 1024
MAX_KID_LENGTH = 256
ACCESS_TOKEN_TYPE = "at+jwt"
ENTRA_ACCESS_TOKEN_TYPE = "JWT"
#: Every access-token typ a caller may expect (an API document may record only these).
ACCESS_TOKEN_TYPES = (ACCESS_TOKEN_TYPE, ENTRA_ACCESS_TOKEN_TYPE)
_TYPE_ALIASES = {ACCESS_TOKEN_TYPE: frozenset({"at+jwt", "application/at+jwt"})}
_JWS_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_NUMERIC_DATES = ("exp", "nbf", "iat")


class TokenRejected(Exception):
    """The token is not acceptable; the reason is for logs and metrics only, never the caller."""


def token_from_authorization(values: Sequence[str], scheme: str | None = "Bearer") -> str:
    """The token carried by the Authorization field values of one request.

    Args:
        values: every value of the field, in order (the gateway passes each field; a WSGI
            server joins repeated fields with commas, which the token syntax then refuses).
        scheme: the required scheme, compared case-insensitively; None takes the value as the
            token, with an optional ``Bearer`` prefix (validate-jwt without require-scheme).

    Raises:
        TokenRejected: missing, repeated, another scheme, not a JWS or too long.
    """
    if not values:
        raise TokenRejected("missing")
    if len(values) > 1:
        raise TokenRejected("duplicate")
    value = values[0].strip(" \t")
    given, _, rest = value.partition(" ")
    if scheme is not None:
        if given.lower() != scheme.lower():
            raise TokenRejected("scheme")
        token = rest.strip(" ")
    else:
        token = rest.strip(" ") if given.lower() == "bearer" and rest else value
    if not token:
        raise TokenRejected("missing")
    if len(token) > MAX_TOKEN_LENGTH or not _JWS_COMPACT.fullmatch(token):
        raise TokenRejected("format")
    return token


def typ_matches(typ: object, expected: str) -> bool:
    """Whether a JOSE ``typ`` is the expected one (case-insensitive; at+jwt has a media form)."""
    if not isinstance(typ, str):
        return False
    accepted = _TYPE_ALIASES.get(expected.lower(), frozenset({expected.lower()}))
    return typ.lower() in accepted


def check_header(header: Mapping[str, Any], typ: str | None) -> tuple[str, str]:
    """Check a JOSE header's alg, kid and (unless typ is None) typ; return (alg, kid)."""
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise TokenRejected("alg")
    if typ is not None and not typ_matches(header.get("typ"), typ):
        raise TokenRejected("typ")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise TokenRejected("kid")
    return alg, kid


def key_algorithm(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a published JWK verifies with (None: not a usable signing key)."""
    if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
        return None
    alg = jwk.get("alg", "RS256")
    return alg if alg in ALGORITHMS else None


def check_key_algorithm(token_alg: str, key_alg: str | None) -> None:
    """Refuse a token whose alg is not the one its key is published for."""
    if key_alg is None or token_alg != key_alg:
        raise TokenRejected("alg-key-mismatch")


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # Python's json module reads NaN and Infinity
    return isinstance(value, int) and not isinstance(value, bool)


def check_claim_types(claims: Mapping[str, Any]) -> None:
    """Refuse claims of the wrong JSON type (after the signature, before any use)."""
    for name in _NUMERIC_DATES:
        if name in claims and not _is_number(claims[name]):
            raise TokenRejected(f"{name}-not-a-number")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise TokenRejected("sub-not-a-string")
    if "roles" in claims:
        roles = claims["roles"]
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise TokenRejected("roles-not-a-list-of-strings")
