"""The model signature (signature.json of a model package) as typed, frozen data."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class SignatureFormatError(ValueError):
    """signature.json is missing, malformed or inconsistent."""


class FieldType(StrEnum):
    """Allowed field types of a signature."""

    INTEGER = "integer"
    NUMBER = "number"
    CATEGORY = "category"


@dataclass(frozen=True)
class FieldSpec:
    """One input field: type, inclusive range or categories, and whether null is allowed."""

    name: str
    type: FieldType
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signature:
    """What a model accepts and answers; read from signature.json."""

    name: str
    version: str
    classes: tuple[str, ...]
    positive_class: str
    threshold: float
    max_rows: int
    fields: tuple[FieldSpec, ...]
    example: Mapping[str, Any]
    target: str = ""

    @property
    def field_names(self) -> tuple[str, ...]:
        """Field names in signature order."""
        return tuple(f.name for f in self.fields)

    def label_for(self, probabilities: Mapping[str, float]) -> str:
        """Positive class when P(positive) ≥ threshold, else the most probable other class."""
        if probabilities[self.positive_class] >= self.threshold:
            return self.positive_class
        others = [c for c in self.classes if c != self.positive_class]
        return max(others, key=lambda c: probabilities[c])


def _number(value: object, where: str) -> float | None:
    """A finite JSON number or None; anything else is a format error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignatureFormatError(f"{where} must be a number")
    if not math.isfinite(value):
        raise SignatureFormatError(f"{where} must be finite")
    return value


def _field(raw: object, index: int) -> FieldSpec:
    """Parse one entry of the fields list."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise SignatureFormatError(f"fields[{index}] must be an object with a name")
    name = raw["name"]
    try:
        kind = FieldType(str(raw.get("type")))
    except ValueError:
        raise SignatureFormatError(f"field {name!r} has an unknown type") from None
    categories = raw.get("categories", [])
    if kind is FieldType.CATEGORY and (
        not isinstance(categories, list)
        or not categories
        or not all(isinstance(c, str) for c in categories)
    ):
        raise SignatureFormatError(f"field {name!r} needs a non-empty list of string categories")
    return FieldSpec(
        name=name,
        type=kind,
        nullable=bool(raw.get("nullable", False)),
        minimum=_number(raw.get("minimum"), f"{name}.minimum"),
        maximum=_number(raw.get("maximum"), f"{name}.maximum"),
        categories=tuple(categories) if kind is FieldType.CATEGORY else (),
    )


def parse_signature(raw: Mapping[str, Any]) -> Signature:
    """Build a Signature from the decoded signature.json, checking its consistency."""
    try:
        fields = tuple(_field(f, i) for i, f in enumerate(raw["fields"]))
        classes = tuple(str(c) for c in raw["classes"])
        signature = Signature(
            name=str(raw["name"]),
            version=str(raw["version"]),
            classes=classes,
            positive_class=str(raw.get("positive_class", classes[-1])),
            threshold=float(raw.get("threshold", 0.5)),
            max_rows=int(raw.get("max_rows", 1000)),
            fields=fields,
            example=dict(raw.get("example") or {}),
            target=str(raw.get("target", "")),
        )
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        if isinstance(exc, SignatureFormatError):
            raise
        raise SignatureFormatError(f"signature.json is incomplete: {exc!r}") from None
    if len(set(signature.field_names)) != len(fields) or not fields:
        raise SignatureFormatError("field names must be unique and non-empty")
    if len(classes) < 2 or signature.positive_class not in classes:
        raise SignatureFormatError("classes need ≥ 2 entries including positive_class")
    if not 0.0 <= signature.threshold <= 1.0 or signature.max_rows < 1:
        raise SignatureFormatError("threshold must be in [0, 1] and max_rows ≥ 1")
    return signature


def load_signature(path: Path) -> Signature:
    """Read and parse a signature.json file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SignatureFormatError(f"cannot read {path.name}: {exc}") from None
    if not isinstance(raw, dict):
        raise SignatureFormatError("signature.json must hold an object")
    return parse_signature(raw)
