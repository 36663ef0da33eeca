"""The one record validator for score requests, against a model signature (stdlib only).

Used per request by the scoring service (app.serving.validation adds the HTTP 422 mapping), by
training (the signature's example must validate) and by :func:`validate_records`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.ml.signature import FieldType, Record, Signature

# Report at most this many errors (the count names all): a 1,000-row request of garbage must
# not produce a megabyte of problem details.
MAX_ERRORS = 50


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


def _check_numeric(check: _Check, value: object) -> str | None:
    """An int or finite float (not bool) within range; INTEGER fields need integral values."""
    expected = "must be an integer" if check.kind is FieldType.INTEGER else "must be a number"
    if isinstance(value, bool):
        return expected
    if isinstance(value, int):
        if not -_INT_LIMIT <= value <= _INT_LIMIT:
            return "out of range"
        return _range_problem(check, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _NOT_FINITE
        if check.kind is FieldType.INTEGER and not value.is_integer():
            return expected
        return _range_problem(check, value)
    return expected


def _check_category(check: _Check, value: object) -> str | None:
    """A string among the signature's categories."""
    if type(value) is not str:
        return "must be a string"
    if value not in check.categories:
        return f"unknown category; allowed: {check.category_hint}"
    return None


_CHECKERS: dict[FieldType, Callable[[_Check, object], str | None]] = {
    FieldType.INTEGER: _check_numeric,
    FieldType.NUMBER: _check_numeric,
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
