"""Model signature (signature.json) and the record check used on the scoring hot path.

The one reader of signature.json (:meth:`Signature.load`) and the one record validator
(:class:`RecordValidator`, wrapped by :func:`validate_records`), shared by training, the
registry, the panel and the scoring service. Only the standard library is imported here: the
scoring service validates every request with RecordValidator and must not pay for pandas or
scikit-learn.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.ml.dataset import DatasetSchema

logger = logging.getLogger(__name__)

Record = dict[str, int | float | str | None]

DEFAULT_MAX_ROWS = 1000
# Report at most this many errors (the count names all): a 1,000-row request of garbage must
# not produce a megabyte of problem details.
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


@dataclass(frozen=True)
class FieldError:
    """One validation problem: ``field`` is a path such as ``data[0].Age``."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """Return the problem+json ``errors`` item form."""
        return {"field": self.field, "message": self.message}


class SignatureError(ValueError):
    """Records do not match the signature; ``errors`` names each offending field.

    ``errors`` holds at most MAX_ERRORS entries; ``total`` counts every problem found.
    """

    def __init__(self, errors: Sequence[FieldError], total: int | None = None) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        self.total = len(self.errors) if total is None else total
        first = self.errors[0] if self.errors else FieldError("data", "invalid")
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"{first.field}: {first.message}{more}")

    def as_dicts(self) -> list[dict[str, str]]:
        """Return the errors as ``[{"field": …, "message": …}]``."""
        return [e.to_dict() for e in self.errors]


# --------------------------------------------------------------------------- record validation
#
# The one record validator, used per request by the scoring service (app.serving.validation
# adds the HTTP 422 mapping) and by validate_records. Decisions pinned by tests:
# * NaN, Infinity, -Infinity and overflowing literals such as 1e999 parse, then fail on the
#   field that holds them (the field is named, which a parse-time rejection could not do).
# * Duplicate JSON object keys (see object_pairs_hook) are rejected on the duplicated field,
#   never take-last.
# * Unknown categories are rejected rather than silently one-hot encoded as zeros.
# * Unknown fields (in a record or at the top level of a body) are rejected.
# * An integer field accepts integral floats (20.0), as JSON Schema's "integer" does.
# * Integers beyond ±2**53 are "out of range" whatever the bounds (not exact in float64).

# Integers beyond 2**53 are not exactly representable as the float64 the model computes with.
_INT_LIMIT = 2**53
_NOT_FINITE = "must be a finite number (NaN and Infinity are not allowed)"
_MISSING: Any = object()

Row = tuple[object, ...]


class DuplicateKeys(dict[str, Any]):
    """A decoded JSON object that had repeated keys; remembers which ones."""

    duplicates: tuple[str, ...] = ()


def object_pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a plain dict, or a DuplicateKeys marking repeated keys."""
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    marked = DuplicateKeys(result)
    seen: set[str] = set()
    repeated: set[str] = set()
    for key, _ in pairs:
        (repeated if key in seen else seen).add(key)
    marked.duplicates = tuple(sorted(repeated))
    return marked


@dataclass(frozen=True)
class _Check:
    """A compiled per-field check: name, kind, bounds, allowed categories, nullability."""

    name: str
    kind: FieldType
    nullable: bool
    minimum: float | None
    maximum: float | None
    categories: frozenset[str]
    category_hint: str


class RecordValidator:
    """Validates decoded request bodies against one signature; reusable and thread-safe.

    Problems raise :class:`SignatureError` (via :meth:`reject`, which a subclass may override
    to raise another exception type, as the scoring service does for its 422).
    """

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.max_rows = signature.max_rows
        self.names = frozenset(signature.feature_names)
        self.checks = tuple(
            _Check(
                name=f.name,
                kind=f.type,
                nullable=f.nullable,
                minimum=f.minimum,
                maximum=f.maximum,
                categories=frozenset(f.categories),
                category_hint=", ".join(repr(c) for c in f.categories),
            )
            for f in signature.fields
        )

    def reject(self, errors: list[FieldError]) -> Exception:
        """The exception raised for these problems (all of them; report at most MAX_ERRORS)."""
        return SignatureError(errors[:MAX_ERRORS], total=len(errors))

    def validate_body(self, payload: Any) -> list[Row]:
        """Return one tuple per record of ``{"data": [...]}`` in signature field order.

        None stands for a missing or null (nullable) field; values are not converted.

        Raises:
            SignatureError: (or what :meth:`reject` returns) naming each offending field.
        """
        if not isinstance(payload, dict):
            raise self.reject([FieldError("(body)", "must be a JSON object")])
        errors: list[FieldError] = []
        if isinstance(payload, DuplicateKeys):
            errors += [FieldError(k, "duplicate key") for k in payload.duplicates]
        for key in payload:
            if key != "data":
                errors.append(FieldError(_short(key), "unknown field; expected only 'data'"))
        data = payload.get("data", _MISSING)
        if data is _MISSING:
            errors.append(FieldError("data", "required field missing"))
        elif type(data) is not list:
            errors.append(FieldError("data", "must be an array of records"))
        elif not data:
            errors.append(FieldError("data", "must contain at least one record"))
        elif len(data) > self.max_rows:
            errors.append(FieldError("data", f"too many records; at most {self.max_rows}"))
        if errors:
            raise self.reject(errors)
        rows = [self._row(record, i, errors) for i, record in enumerate(data)]
        if errors:
            raise self.reject(errors)
        return rows

    def _row(self, record: Any, index: int, errors: list[FieldError]) -> Row:
        """Validate one record, appending problems to errors; returns the values in order."""
        if not isinstance(record, dict):
            errors.append(FieldError(f"data[{index}]", "must be an object"))
            return ()
        if isinstance(record, DuplicateKeys):
            for key in record.duplicates:
                errors.append(FieldError(f"data[{index}].{_short(key)}", "duplicate key"))
        if not record.keys() <= self.names:
            for key in record:
                if key not in self.names:
                    errors.append(FieldError(f"data[{index}].{_short(key)}", "unknown field"))
        values: list[object] = []
        append = values.append
        for check in self.checks:
            value = record.get(check.name)
            if value is None:
                if not check.nullable:
                    missing = check.name not in record
                    message = "required field missing" if missing else "must not be null"
                    errors.append(FieldError(f"data[{index}].{check.name}", message))
                append(None)
                continue
            problem = _CHECKERS[check.kind](check, value)
            if problem is not None:
                errors.append(FieldError(f"data[{index}].{check.name}", problem))
            append(value)
        return tuple(values)


def _short(key: str) -> str:
    """Bound the length of a client-chosen key before it is reflected in an error."""
    if not key:
        return '""'  # an empty key must still yield a visible field path
    return key if len(key) <= 64 else key[:61] + "..."


def _range_problem(check: _Check, value: float) -> str | None:
    """Inclusive bounds check for a finite number."""
    if check.minimum is not None and value < check.minimum:
        return f"must be ≥ {check.minimum:g}"
    if check.maximum is not None and value > check.maximum:
        return f"must be ≤ {check.maximum:g}"
    return None


def _check_integer(check: _Check, value: object) -> str | None:
    """An int (not bool) or an integral finite float, within range."""
    if isinstance(value, bool):
        return "must be an integer"
    if isinstance(value, int):
        if not -_INT_LIMIT <= value <= _INT_LIMIT:
            return "out of range"
        return _range_problem(check, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _NOT_FINITE
        if not value.is_integer():
            return "must be an integer"
        return _range_problem(check, value)
    return "must be an integer"


def _check_number(check: _Check, value: object) -> str | None:
    """An int or finite float (not bool), within range."""
    if isinstance(value, bool):
        return "must be a number"
    if isinstance(value, int):
        if not -_INT_LIMIT <= value <= _INT_LIMIT:
            return "out of range"
        return _range_problem(check, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _NOT_FINITE
        return _range_problem(check, value)
    return "must be a number"


def _check_category(check: _Check, value: object) -> str | None:
    """A string among the signature's categories."""
    if type(value) is not str:
        return "must be a string"
    if value not in check.categories:
        return f"unknown category; allowed: {check.category_hint}"
    return None


_CHECKERS: dict[FieldType, Callable[[_Check, object], str | None]] = {
    FieldType.INTEGER: _check_integer,
    FieldType.NUMBER: _check_number,
    FieldType.CATEGORY: _check_category,
}


_CASTS: dict[FieldType, Callable[[Any], int | float]] = {
    FieldType.INTEGER: int,  # JSON does not distinguish 20 from 20.0
    FieldType.NUMBER: float,
}


def validate_records(signature: Signature, records: Any) -> list[Record]:
    """Check records with :class:`RecordValidator` and return them normalised.

    Every returned record has every field, in signature order; a missing or null nullable
    field becomes ``None`` (no account); integers are ``int`` and numbers ``float``.

    Args:
        signature: the model's signature.
        records: the ``data`` list of a score request, as parsed from JSON.

    Returns:
        The normalised records.

    Raises:
        SignatureError: with one FieldError per problem (up to MAX_ERRORS), fields named
            like ``data[3].Age`` (``data`` for the list itself).
    """
    rows = RecordValidator(signature).validate_body({"data": records})
    names = signature.feature_names
    casts = [(i, _CASTS[spec.type]) for i, spec in enumerate(signature.fields)
             if spec.type in _CASTS]
    out: list[Record] = []
    for row in rows:
        values: list[Any] = list(row)
        for i, cast in casts:
            if values[i] is not None:
                values[i] = cast(values[i])
        out.append(dict(zip(names, values, strict=True)))
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
                FieldSpec(fname, FieldType.CATEGORY, col.nullable, categories=col.categories or ())
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
