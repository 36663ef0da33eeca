"""Model signature (signature.json): the one reader of it, shared by every component.

Training builds it (app.ml.dataset.build_signature), the registry stores it, the panel's
score tester draws its form from it, and the scoring service validates each request against it
(app.ml.validation). Only the standard library is imported here, so the scoring service does
not pay for pandas or scikit-learn.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

Record = dict[str, int | float | str | None]

DEFAULT_MAX_ROWS = 1000

# Sanity bounds for scoring, wider than the training data (Age 19-75, Credit amount 250-18,424,
# Duration 4-72) so plausible applicants are scored, narrow enough to reject nonsense.
DEFAULT_BOUNDS: Mapping[str, tuple[float, float]] = {
    "Age": (18, 120),
    "Job": (0, 3),
    "Credit amount": (1, 1_000_000),
    "Duration": (1, 120),
}

# The seed's example record, used when it fits the signature.
DESIGN_EXAMPLE: Mapping[str, Any] = {
    "Age": 20,
    "Sex": "male",
    "Job": 0,
    "Housing": "own",
    "Saving accounts": "little",
    "Checking account": "little",
    "Credit amount": 100,
    "Duration": 48,
    "Purpose": "radio/TV",
}


class SignatureFormatError(ValueError):
    """signature.json is missing, malformed or inconsistent."""


class FieldType(StrEnum):
    """Type of a signature field."""

    INTEGER = "integer"
    NUMBER = "number"
    CATEGORY = "category"


@dataclass(frozen=True)
class FieldSpec:
    """One input field: its type, whether it may be null, allowed categories or range."""

    name: str
    type: FieldType
    nullable: bool = False
    categories: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the signature.json form."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.type is FieldType.CATEGORY:
            out["categories"] = list(self.categories)
        else:
            out["minimum"] = self.minimum
            out["maximum"] = self.maximum
        out["nullable"] = self.nullable
        return out

    @classmethod
    def from_dict(cls, data: object, index: int = 0) -> FieldSpec:
        """Read the signature.json form of ``fields[index]``.

        Raises:
            SignatureFormatError: not an object with a name, an unknown type, a category
                field without a non-empty list of string categories, or a bound that is not
                a finite number.
        """
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise SignatureFormatError(f"fields[{index}] must be an object with a name")
        name = data["name"]
        try:
            kind = FieldType(str(data.get("type")))
        except ValueError:
            raise SignatureFormatError(f"field {name!r} has an unknown type") from None
        categories = data.get("categories", [])
        if kind is FieldType.CATEGORY and (
            not isinstance(categories, list)
            or not categories
            or not all(isinstance(c, str) for c in categories)
        ):
            raise SignatureFormatError(
                f"field {name!r} needs a non-empty list of string categories"
            )
        return cls(
            name=name,
            type=kind,
            nullable=bool(data.get("nullable", False)),
            categories=tuple(categories) if kind is FieldType.CATEGORY else (),
            minimum=_bound(data.get("minimum"), f"{name}.minimum"),
            maximum=_bound(data.get("maximum"), f"{name}.maximum"),
        )


def _bound(value: object, where: str) -> float | None:
    """A finite JSON number or None; anything else is a format error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignatureFormatError(f"{where} must be a number")
    if not math.isfinite(value):
        raise SignatureFormatError(f"{where} must be finite")
    return value


@dataclass(frozen=True)
class Signature:
    """What a model accepts and how its probabilities turn into a label."""

    name: str
    fields: tuple[FieldSpec, ...]
    classes: tuple[str, ...] = ("bad", "good")
    positive_class: str = "bad"
    threshold: float = 0.5
    target: str = "Risk"
    max_rows: int = DEFAULT_MAX_ROWS
    version: str | None = None
    example: Mapping[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Field names in model input order."""
        return tuple(f.name for f in self.fields)

    @property
    def negative_class(self) -> str:
        """The class predicted when P(positive_class) is below the threshold."""
        return next(c for c in self.classes if c != self.positive_class)

    def label_for(self, p_positive: float) -> str:
        """Return the label for a probability of the positive class."""
        return self.positive_class if p_positive >= self.threshold else self.negative_class

    def label_from(self, probabilities: Mapping[str, float]) -> str:
        """Positive class when P(positive) ≥ threshold, else the most probable other class.

        Same as :meth:`label_for` for two classes; also defined for more.
        """
        if probabilities[self.positive_class] >= self.threshold:
            return self.positive_class
        others = [c for c in self.classes if c != self.positive_class]
        return max(others, key=lambda c: probabilities[c])

    def with_version(self, version: str | None) -> Signature:
        """Return a copy carrying the registry version."""
        return replace(self, version=version)

    def to_dict(self) -> dict[str, Any]:
        """Return the signature.json form (docs/internal-contracts.md)."""
        return {
            "name": self.name,
            "version": self.version,
            "target": self.target,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "max_rows": self.max_rows,
            "fields": [f.to_dict() for f in self.fields],
            "example": dict(self.example),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """Read the signature.json form, checking its consistency.

        ``positive_class`` defaults to the last class, ``threshold`` to 0.5, ``max_rows`` to
        DEFAULT_MAX_ROWS; ``version`` may be null (not yet registered).

        Raises:
            SignatureFormatError: a required key is missing or malformed, field names are
                empty or repeated, fewer than two classes or positive_class not among them,
                threshold outside [0, 1], max_rows < 1, or a bound is not a finite number.
        """
        try:
            fields = tuple(FieldSpec.from_dict(f, i) for i, f in enumerate(data["fields"]))
            classes = tuple(str(c) for c in data["classes"])
            version = data.get("version")
            signature = cls(
                name=str(data["name"]),
                version=None if version is None else str(version),
                target=str(data.get("target", "Risk")),
                classes=classes,
                positive_class=str(data.get("positive_class", classes[-1])),
                threshold=float(data.get("threshold", 0.5)),
                max_rows=int(data.get("max_rows", DEFAULT_MAX_ROWS)),
                fields=fields,
                example=dict(data.get("example") or {}),
            )
        except SignatureFormatError:
            raise
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise SignatureFormatError(f"signature.json is incomplete: {exc!r}") from None
        if not fields or len(set(signature.feature_names)) != len(fields):
            raise SignatureFormatError("field names must be unique and non-empty")
        if len(classes) < 2 or signature.positive_class not in classes:
            raise SignatureFormatError("classes need ≥ 2 entries including positive_class")
        # `not a <= x <= b` also rejects a NaN threshold.
        if not 0.0 <= signature.threshold <= 1.0 or signature.max_rows < 1:
            raise SignatureFormatError("threshold must be in [0, 1] and max_rows ≥ 1")
        return signature

    def to_json(self) -> str:
        """Return signature.json text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Signature:
        """Read a signature.json file.

        Raises:
            SignatureFormatError: the file cannot be read, is not JSON, does not hold an
                object, or fails :meth:`from_dict`'s checks.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SignatureFormatError(f"cannot read {path.name}: {exc}") from None
        if not isinstance(raw, dict):
            raise SignatureFormatError(f"{path.name} must hold an object")
        return cls.from_dict(raw)
