"""Bearer access tokens for the panel REST API, validated as the gateway validates them."""

from __future__ import annotations

from app.auth.users import User
from app.errors import Unauthorized


def user_from_bearer(header: str) -> User | None:
    """Return the user an `Authorization: Bearer` header proves, or raise Unauthorized."""
    raise Unauthorized("bearer tokens are not accepted yet: sign in to the panel",
                       headers={"WWW-Authenticate": "Bearer"})
