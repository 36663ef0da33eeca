"""Environments (staging, prod) recorded by the provision job: the only module that writes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from app.db import Environment
from app.extensions import db


@dataclass(frozen=True)
class EnsureReport:
    """Which environments a provision run created, found unchanged, or updated."""

    created: tuple[str, ...]
    existing: tuple[str, ...]
    updated: tuple[str, ...]


def list_environments(workspace: str | None = None) -> list[Environment]:
    """Return the recorded environments, by name."""
    query = select(Environment).order_by(Environment.name)
    if workspace is not None:
        query = query.where(Environment.workspace == workspace)
    return list(db.session.scalars(query))


def ensure(workspace: str, settings: Mapping[str, Mapping[str, Any]]) -> EnsureReport:
    """Record each environment of ``settings`` (name → size) under ``workspace``, idempotently.

    An environment that exists keeps its creation time; changed settings are updated.
    """
    created, existing, updated = [], [], []
    for name, values in settings.items():
        row = db.session.get(Environment, name)
        if row is None:
            db.session.add(Environment(name=name, workspace=workspace, settings=dict(values)))
            created.append(name)
        elif row.workspace != workspace or row.settings != dict(values):
            row.workspace, row.settings = workspace, dict(values)
            updated.append(name)
        else:
            existing.append(name)
    db.session.commit()
    return EnsureReport(tuple(created), tuple(existing), tuple(updated))


def remove(workspace: str) -> tuple[str, ...]:
    """Delete the environments of ``workspace``; return their names."""
    names = tuple(env.name for env in list_environments(workspace))
    db.session.execute(delete(Environment).where(Environment.workspace == workspace))
    db.session.commit()
    return names
