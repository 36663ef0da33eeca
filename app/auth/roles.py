"""App roles (the `roles` claim, as Entra app roles) and what each one may do."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """The app roles (README.md, "Roles"); values are the claim strings."""

    ENGINEER = "MLOps.Engineer"
    APPROVER = "MLOps.Approver"
    SCORER = "Score.Invoke"
    ADMIN = "MLOps.Admin"


def has_role(roles: frozenset[str] | set[str], *required: Role) -> bool:
    """Return whether `roles` grants any of `required`; admins may do everything."""
    return Role.ADMIN in roles or any(role in roles for role in required)
