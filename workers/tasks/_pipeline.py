"""Helpers shared by the pipeline-stage tasks: the configuration and parameter checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import ValidationError
from app.pipeline_config import PipelineConfig, PipelineConfigError, load_pipeline_config


def pipeline_config() -> PipelineConfig:
    """Load the pipeline configuration; a bad file fails the job naming the bad key."""
    try:
        return load_pipeline_config()
    except PipelineConfigError as exc:
        raise ValidationError(f"pipeline configuration: {exc}",
                              errors=[{"field": exc.key, "message": exc.detail}]) from None


def check_params(params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse parameters the job does not know (a typo must not silently use a default)."""
    known = sorted(allowed)
    for key in params:
        if key not in known:
            raise ValidationError(
                f"params.{key}: unknown parameter; this job takes {', '.join(known) or 'none'}",
                errors=[{"field": f"params.{key}", "message": "unknown parameter"}])
