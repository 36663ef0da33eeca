"""The configured backend and the names every service shares, from one place each.

The backend (``BACKEND``: local, azure, …) is built once per app: it may keep caches (the
local one remembers the parsed tail of the gateway's request log). Environment names, their
order, API names and paths come from the pipeline file (``environments``, ``gateway``).
"""

from __future__ import annotations

import logging
import threading

from flask import current_app, has_app_context

from app.backends import get_backend
from app.backends.base import Backend, SlotRef
from app.db import Deployment
from app.errors import ConfigError
from app.pipeline_config import (
    DEFAULT_PATH,
    PipelineConfig,
    PipelineConfigError,
    load_pipeline_config,
)
from app.services import models

logger = logging.getLogger(__name__)

_EXTENSION = "modelgate.backend"
_LOCK = threading.Lock()


def backend() -> Backend:
    """This app's backend, built on first use from its configuration."""
    extensions = current_app.extensions
    with _LOCK:
        found = extensions.get(_EXTENSION)
        if found is None:
            found = extensions[_EXTENSION] = get_backend(current_app.config)
    return found  # type: ignore[no-any-return]


def pipeline() -> PipelineConfig:
    """The pipeline file (cached per app; read afresh outside an app, e.g. by the CLI)."""
    return models.pipeline() if has_app_context() else load_pipeline_config()


def names() -> PipelineConfig:
    """The pipeline file for names only (pages, the REST API): a broken file falls back to the
    shipped default, so pages keep working while the jobs fail naming the file's bad key."""
    try:
        return pipeline()
    except (ConfigError, PipelineConfigError) as exc:
        logger.warning("pipeline file unreadable (%s); pages use the shipped default's names",
                       exc)
        return load_pipeline_config(DEFAULT_PATH)


def ready_timeout_seconds() -> float:
    """How long a deploy waits for a new slot to be ready on the configured backend:
    ``runtime.ready_timeout_seconds`` locally (replicas start in seconds),
    ``azure.ready_timeout_seconds`` on the azure backend (an online deployment pulls its image
    and downloads the model first: 20 minutes and more)."""
    config = pipeline()
    if str(current_app.config.get("BACKEND") or "local").strip().lower() == "azure":
        return float(config.azure.ready_timeout_seconds)
    return config.runtime.ready_timeout_seconds


def environment_names() -> tuple[str, ...]:
    """The configured environments, in the pipeline file's order (staging before prod)."""
    return names().environment_names


def api_name(environment: str) -> str:
    """The gateway API name of an environment (prod keeps ``gateway.api_name`` plain)."""
    return names().gateway.name_for(environment)


def api_path(environment: str) -> str:
    """The gateway path of an environment (prod at ``gateway.api_path``, others prefixed)."""
    return names().gateway.path_for(environment)


def slot_ref(row: Deployment) -> SlotRef:
    """The backend's name for a deployment row's slot."""
    return SlotRef(id=row.id, environment=row.environment,
                   endpoint=row.endpoint or row.environment, slot=row.slot,
                   model_name=row.model_name, model_version=row.model_version)
