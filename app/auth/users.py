"""The signed-in user (flask-login), built from token claims, and the role checks for views.

Sessions themselves (the Redis record behind the cookie) are app.auth.sessions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask_login import current_user

from app.auth.roles import Role, has_role
from app.errors import Forbidden

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class User:
    """A signed-in person or client; roles come from the token's `roles` claim."""

    id: str
    name: str
    username: str
    roles: frozenset[str]
    via: str = "session"  # or "bearer" for API calls with an access token

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return self.id

    def can(self, *roles: Role) -> bool:
        """Whether the user holds any of `roles` (admins hold all)."""
        return has_role(self.roles, *roles)

    @property
    def role_names(self) -> list[str]:
        return sorted(self.roles)

    @classmethod
    def from_claims(cls, claims: dict[str, Any], *, via: str = "session") -> User:
        """Build a user from ID-token or access-token claims."""
        roles = claims.get("roles") or []
        return cls(
            id=str(claims.get("oid") or claims.get("sub")),
            # Client-credentials tokens name the client in azp (v2) or appid (Entra v1).
            name=str(claims.get("name") or claims.get("preferred_username")
                     or claims.get("azp") or claims.get("appid") or claims.get("sub")),
            username=str(claims.get("preferred_username") or claims.get("azp")
                         or claims.get("appid") or claims.get("sub")),
            roles=frozenset(str(r) for r in roles if isinstance(r, str)),
            via=via,
        )


def role_required(*roles: Role) -> Callable[[F], F]:
    """Require a signed-in user holding any of `roles`; 403 names the missing role."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from app.extensions import login_manager

            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if roles and not current_user.can(*roles):
                needed = " or ".join(r.value for r in roles)
                raise Forbidden(f"this needs the {needed} role; you have "
                                f"{', '.join(current_user.role_names) or 'no roles'}")
            return view(*args, **kwargs)

        wrapper.required_roles = roles  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def signed_in(view: F) -> F:
    """Require any signed-in user (everyone signed in may read the dashboard)."""
    return role_required()(view)
