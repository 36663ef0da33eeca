"""Model signature (signature.json) and the record check used on the scoring hot path.

Only the standard library is imported here: the scoring service validates every request
with :func:`validate_records` and must not pay for pandas or scikit-learn.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.ml.dataset import DatasetSchema

logger = logging.getLogger(__name__)

Record = dict[str, int | float | str | None]

DEFAULT_MAX_ROWS = 1000
# Stop collecting after this many errors: a 1,000-row request of garbage must not produce a
# megabyte of problem details.
MAX_ERRORS = 50

# Sanity bounds for scoring, wider than the training data (Age 19-75, Credit amount 250-18,424,
# Duration 4-72) so plausible applicants are scored, narrow enough to reject nonsense.
DEFAULT_BOUNDS: Mapping[str, tuple[float, float]] = {
    "Age": (18, 120),
    "Job": (0, 3),
    "Credit amount": (1, 1_000_000),
    "Duration": (1, 120),
}

# The example record of DESIGN.md, used when it fits the signature.
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
    categories: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the signature.json form."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.type is FieldType.CATEGORY:
            out["categories"] = list(self.categories or ())
        else:
            out["minimum"] = self.minimum
            out["maximum"] = self.maximum
        out["nullable"] = self.nullable
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldSpec:
        """Read the signature.json form."""
        ftype = FieldType(data["type"])
        cats = data.get("categories")
        return cls(
            name=str(data["name"]),
            type=ftype,
            nullable=bool(data.get("nullable", False)),
            categories=tuple(cats) if cats is not None else None,
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
        )


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
        """Read the signature.json form."""
        version = data.get("version")
        return cls(
            name=str(data["name"]),
            version=None if version is None else str(version),
            target=str(data.get("target", "Risk")),
            classes=tuple(data["classes"]),
            positive_class=str(data["positive_class"]),
            threshold=float(data["threshold"]),
            max_rows=int(data.get("max_rows", DEFAULT_MAX_ROWS)),
            fields=tuple(FieldSpec.from_dict(f) for f in data["fields"]),
            example=dict(data.get("example") or {}),
        )

    def to_json(self) -> str:
        """Return signature.json text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Signature:
        """Read a signature.json file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class FieldError:
    """One validation problem: ``field`` is a path such as ``data[0].Age``."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """Return the problem+json ``errors`` item form."""
        return {"field": self.field, "message": self.message}


class SignatureError(ValueError):
    """Records do not match the signature; ``errors`` names each offending field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        first = self.errors[0] if self.errors else FieldError("data", "invalid")
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"{first.field}: {first.message}{more}")

    def as_dicts(self) -> list[dict[str, str]]:
        """Return the errors as ``[{"field": …, "message": …}]``."""
        return [e.to_dict() for e in self.errors]


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check_value(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """Return (normalised value, error message or None)."""
    if spec.type is FieldType.CATEGORY:
        if not isinstance(value, str):
            return None, f"must be a string, one of: {', '.join(spec.categories or ())}"
        if value not in (spec.categories or ()):
            allowed = ", ".join(spec.categories or ())
            return None, f"unknown category {value!r}; allowed: {allowed}"
        return value, None
    # bool is a subclass of int in Python, but true/false is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"must be {'an integer' if spec.type is FieldType.INTEGER else 'a number'}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, "must be a finite number (NaN and Infinity are not allowed)"
    if spec.type is FieldType.INTEGER:
        if isinstance(value, float):
            if not value.is_integer():
                return None, "must be an integer"
            value = int(value)  # JSON does not distinguish 20 from 20.0
    else:
        value = float(value)
    if (spec.minimum is not None and value < spec.minimum) or (
        spec.maximum is not None and value > spec.maximum
    ):
        return None, f"must be between {_fmt(spec.minimum)} and {_fmt(spec.maximum)}"
    return value, None


def validate_records(signature: Signature, records: Any) -> list[Record]:
    """Check records against the signature and return them normalised.

    Every returned record has every field, in signature order; a missing or null nullable
    field becomes ``None`` (no account); integers are ``int`` and numbers ``float``.

    Args:
        signature: the model's signature.
        records: the ``data`` list of a score request, as parsed from JSON.

    Returns:
        The normalised records.

    Raises:
        SignatureError: with one FieldError per problem (up to MAX_ERRORS), fields named
            like ``data[3].Age``.
    """
    if not isinstance(records, list):
        raise SignatureError([FieldError("data", "must be a list of records")])
    if not records:
        raise SignatureError([FieldError("data", "must contain at least one record")])
    if len(records) > signature.max_rows:
        raise SignatureError(
            [FieldError("data", f"too many rows: {len(records)} > {signature.max_rows}")]
        )
    specs = signature.fields
    known = set(signature.feature_names)
    errors: list[FieldError] = []
    out: list[Record] = []
    for i, record in enumerate(records):
        where = f"data[{i}]"
        if not isinstance(record, dict):
            errors.append(FieldError(where, "must be an object"))
            continue
        clean: Record = {}
        for spec in specs:
            value = record.get(spec.name)
            if value is None:
                if spec.nullable:
                    clean[spec.name] = None
                elif spec.name in record:
                    errors.append(FieldError(f"{where}.{spec.name}", "must not be null"))
                else:
                    errors.append(FieldError(f"{where}.{spec.name}", "missing required field"))
                continue
            normalised, problem = _check_value(spec, value)
            if problem is not None:
                errors.append(FieldError(f"{where}.{spec.name}", problem))
            else:
                clean[spec.name] = normalised
        for key in record:
            if key not in known:
                errors.append(FieldError(f"{where}.{key}", "unknown field"))
        if len(errors) >= MAX_ERRORS:
            break
        out.append(clean)
    if errors:
        raise SignatureError(errors[:MAX_ERRORS])
    return out


def build_signature(
    schema: DatasetSchema,
    features: Sequence[str],
    *,
    name: str,
    target: str = "Risk",
    classes: Sequence[str] = ("bad", "good"),
    positive_class: str = "bad",
    threshold: float = 0.5,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    example: Mapping[str, Any] | None = None,
) -> Signature:
    """Build a signature from a dataset schema.

    Categories are the observed ones; numeric ranges come from ``bounds`` (default
    DEFAULT_BOUNDS) and fall back to the observed range for columns without a bound. A column
    with gaps in the data is nullable. The example is DESIGN.md's record when it fits,
    else one built from the schema.

    Raises:
        KeyError: a feature is not a column of the schema.
        ValueError: a bound is inverted or excludes every observed value.
    """
    limits = dict(DEFAULT_BOUNDS if bounds is None else bounds)
    specs = []
    for fname in features:
        col = schema.column(fname)
        if col.type == "category":
            specs.append(
                FieldSpec(fname, FieldType.CATEGORY, col.nullable, categories=col.categories)
            )
            continue
        lo, hi = limits.get(fname, (col.minimum, col.maximum))
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"bounds for {fname!r} are inverted: {lo} > {hi}")
        observed = (col.minimum, col.maximum)
        if None not in observed and lo is not None and hi is not None and (
            observed[1] < lo or observed[0] > hi  # type: ignore[operator]
        ):
            raise ValueError(f"bounds {lo}-{hi} for {fname!r} exclude all observed values "
                             f"{observed[0]}-{observed[1]}")
        specs.append(FieldSpec(fname, FieldType(col.type), col.nullable, minimum=lo, maximum=hi))
    sig = Signature(
        name=name,
        fields=tuple(specs),
        classes=tuple(classes),
        positive_class=positive_class,
        threshold=float(threshold),
        target=target,
        max_rows=max_rows,
    )
    candidates = [example] if example is not None else [DESIGN_EXAMPLE, _synthetic_example(sig)]
    for candidate in candidates:
        try:
            validate_records(sig, [dict(candidate)])
        except SignatureError:
            continue
        return replace(sig, example={k: candidate.get(k) for k in sig.feature_names})
    raise ValueError("example record does not fit the signature")


def _synthetic_example(sig: Signature) -> Record:
    out: Record = {}
    for spec in sig.fields:
        if spec.type is FieldType.CATEGORY:
            out[spec.name] = spec.categories[0] if spec.categories else None
        else:
            lo = spec.minimum if spec.minimum is not None else 0
            hi = spec.maximum if spec.maximum is not None else lo
            mid = (lo + hi) / 2
            out[spec.name] = int(mid) if spec.type is FieldType.INTEGER else float(mid)
    return out
