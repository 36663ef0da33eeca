"""Job parameter schemas: each kind's parameters are checked when the job is submitted.

A bad parameter is a ValidationError (422) naming the field, and no job row is written.
What can only be known when the job runs (does version 999 exist? is anything deployed?)
is still checked by the job itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.errors import ValidationError

Check = Callable[[str, Any], None]

MAX_RATE_LIMIT = 1_000_000
MAX_POLICY_BYTES = 64 * 1024
PIPELINE_STAGES: tuple[str, ...] = ("provision", "train", "deploy", "publish")


@dataclass(frozen=True)
class Param:
    """One parameter a job kind takes, and how to check its value."""

    name: str
    check: Check
    description: str


def refuse(field: str, message: str) -> ValidationError:
    """The 422 for one bad field (``params.<name>``)."""
    return ValidationError(f"{field}: {message}", errors=[{"field": field, "message": message}])


def check(params: Mapping[str, Any], schema: tuple[Param, ...],
          together: Callable[[Mapping[str, Any]], None] | None = None) -> None:
    """Refuse unknown parameters and bad values, naming the field."""
    known = {p.name: p for p in schema}
    for key in params:
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise refuse(f"params.{key}", f"unknown parameter; this job takes {names}")
    for key, value in params.items():
        known[key].check(f"params.{key}", value)
    if together is not None:
        together(params)


# --------------------------------------------------------------------------- value checks


def boolean(field: str, value: Any) -> None:
    """true or false."""
    if not isinstance(value, bool):
        raise refuse(field, "must be true or false")


def positive_integer(field: str, value: Any) -> None:
    """An integer from 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise refuse(field, "must be a positive integer")


def model_version(field: str, value: Any) -> None:
    """A registry version number: a positive integer or its digits as a string."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or int(text) < 1:
        raise refuse(field, "must be a model version number such as \"3\"")


def environment(field: str, value: Any) -> None:
    """One of the pipeline file's environments (when the file itself is broken, the shipped
    default's: the job is then queued and fails naming the file's bad key, as every job does)."""
    from app.services.backend import environment_names

    if not isinstance(value, str):
        raise refuse(field, "must be an environment name")
    names = environment_names()
    if value not in names:
        raise refuse(field, f"unknown environment {value!r}; use one of: {', '.join(names)}")


def rate_limit(field: str, value: Any) -> None:
    """Calls per minute per caller."""
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_RATE_LIMIT:
        raise refuse(field, f"must be an integer from 1 to {MAX_RATE_LIMIT}")


def policy_xml(field: str, value: Any) -> None:
    """A policy document (compiled when the job publishes it)."""
    if not isinstance(value, str):
        raise refuse(field, "must be a policy document (a string)")
    if len(value.encode()) > MAX_POLICY_BYTES:
        raise refuse(field, f"must be at most {MAX_POLICY_BYTES // 1024} KiB")


def stage(field: str, value: Any) -> None:
    """A pipeline stage to stop after."""
    if value not in PIPELINE_STAGES:
        raise refuse(field, f"unknown stage {value!r}; use one of: {', '.join(PIPELINE_STAGES)}")


def training_settings(field: str, value: Any) -> None:
    """Overrides of the pipeline file's ``model:`` section, each key checked."""
    from app.ml.config import ConfigError, TrainingConfig

    if not isinstance(value, dict):
        raise refuse(field, "must be an object of training settings")
    try:
        TrainingConfig.from_dict(value, prefix=field)
    except ConfigError as exc:
        raise ValidationError(str(exc), errors=[{"field": exc.key, "message": str(exc)}]
                              ) from None


def integer_range(low: int, high: int) -> Check:
    """An integer from low to high."""
    def checker(field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise refuse(field, f"must be an integer from {low} to {high}")
    return checker


def number_range(low: float, high: float) -> Check:
    """A number from low to high."""
    def checker(field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not low <= value <= high:
            raise refuse(field, f"must be a number from {low:g} to {high:g}")
    return checker


def text(field: str, value: Any) -> None:
    """A short string."""
    if not isinstance(value, str) or len(value) > 200:
        raise refuse(field, "must be a string of at most 200 characters")


def version_or_rollback(params: Mapping[str, Any]) -> None:
    """A deploy takes a version or a rollback, not both."""
    if params.get("rollback") and params.get("version") is not None:
        raise refuse("params.version", "give either version or rollback, not both")
