"""Bearer access tokens for the panel REST API, validated as the gateway validates them."""

from __future__ import annotations

import logging

from app.auth.oidc import TokenValidationError, validate_access_token
from app.auth.session_tokens import identity_client
from app.auth.users import User
from app.errors import Unauthorized
from app.gateway.token_rules import TokenRejected, token_from_authorization

log = logging.getLogger(__name__)


def _refuse(error: str = "invalid_token") -> Unauthorized:
    """A 401 with a generic body: the reason is never echoed, nor the token."""
    return Unauthorized("the access token is missing, malformed, expired or not for this API",
                        headers={"WWW-Authenticate": f'Bearer error="{error}"'})


def user_from_bearer(header: str) -> User:
    """Return the user an `Authorization: Bearer` header proves, or raise Unauthorized.

    `header` is the field's value as the WSGI server hands it over: repeated fields arrive
    joined with commas, which the token syntax refuses (as the gateway refuses two fields).
    """
    try:
        token = token_from_authorization([header], "Bearer")
    except TokenRejected:
        raise _refuse("invalid_request") from None
    client = identity_client()
    try:
        claims = validate_access_token(
            token, jwks_client=client.jwks, issuer=client.settings.issuer,
            audience=client.settings.api_audiences, typ=client.access_token_type)
    except TokenValidationError as exc:
        log.info("bearer token refused: %s", exc)
        raise _refuse() from None
    return User.from_claims(claims, via="bearer")
