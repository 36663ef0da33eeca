"""The signed-in user (flask-login), built from token claims, and the role checks for views."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import request, session, url_for
from flask_login import current_user

from app.auth.roles import Role, has_role
from app.errors import Forbidden, Unauthorized

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

    def to_session(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "username": self.username,
                "roles": sorted(self.roles), "signed_in_at": int(time.time())}


def _bearer_request(req: Any) -> bool:
    """API requests with an Authorization header are judged by the token alone, not the cookie."""
    return bool(req.path.startswith("/api/") and req.headers.get("Authorization"))


def init_login(app: Any) -> None:
    """Bind flask-login: users live in the (signed) session, bearer tokens via request_loader."""
    from app.extensions import login_manager

    login_manager.init_app(app)
    login_manager.login_view = "auth.login"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        data = session.get("user")
        if not data or data.get("id") != user_id or _bearer_request(request):
            return None
        # Absolute lifetime: a permanent Flask session slides with every request, this does not.
        age = time.time() - float(data.get("signed_in_at", 0))
        if age > app.permanent_session_lifetime.total_seconds():
            return None
        return User(id=data["id"], name=data["name"], username=data["username"],
                    roles=frozenset(data.get("roles", [])))

    @login_manager.request_loader
    def load_from_bearer(req: Any) -> User | None:
        if not _bearer_request(req):
            return None  # pages never take bearer tokens
        from app.auth.bearer import user_from_bearer

        return user_from_bearer(req.headers["Authorization"])

    @login_manager.unauthorized_handler
    def unauthorized() -> Any:
        from flask import redirect

        if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
            raise Unauthorized("sign in first: send a bearer access token or use the panel",
                               headers={"WWW-Authenticate": "Bearer"})
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


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
