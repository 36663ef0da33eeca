"""Bearer access tokens for the panel REST API, validated as the gateway validates them."""

from __future__ import annotations

import logging

from app.auth.oidc import TokenValidationError, validate_access_token
from app.auth.users import User
from app.errors import Unauthorized

log = logging.getLogger(__name__)

#: Longer headers are refused before any parsing (real tokens are ~1–3 KB).
MAX_TOKEN_LENGTH = 8192


def _refuse(error: str = "invalid_token") -> Unauthorized:
    """A 401 with a generic body: the reason is never echoed, nor the token."""
    return Unauthorized("the access token is missing, malformed, expired or not for this API",
                        headers={"WWW-Authenticate": f'Bearer error="{error}"'})


def user_from_bearer(header: str) -> User:
    """Return the user an `Authorization: Bearer` header proves, or raise Unauthorized."""
    from app.auth.session_tokens import identity_client

    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme != "Bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise _refuse("invalid_request")
    client = identity_client()
    try:
        claims = validate_access_token(
            token, jwks_client=client.jwks, issuer=client.settings.issuer,
            audience=client.settings.api_audiences, typ=client.access_token_type)
    except TokenValidationError as exc:
        log.info("bearer token refused: %s", exc)
        raise _refuse() from None
    return User.from_claims(claims, via="bearer")
