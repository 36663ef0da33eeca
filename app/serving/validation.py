"""Parse and validate a score request body against a Signature (the hot path; no pandas).

Decisions pinned by tests:
* NaN, Infinity, -Infinity and overflowing literals such as 1e999 parse, then fail as 422 on
  the field that holds them (the field is named, which a parse-time rejection could not do).
* Duplicate JSON object keys are rejected with 422 on the duplicated field, never take-last.
* Unknown categories are rejected with 422 rather than silently one-hot encoded as zeros.
* Unknown fields (in a record or at the top level) are rejected with 422.
* An integer field accepts integral floats (20.0), as JSON Schema's "integer" does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.serving.errors import FieldError, ProblemError
from app.serving.signature import FieldType, Signature

MAX_REPORTED_ERRORS = 50
# Integers beyond 2**53 are not exactly representable as the float64 the model computes with.
_INT_LIMIT = 2**53
_NOT_FINITE = "must be a finite number (NaN and Infinity are not allowed)"
_MISSING: Any = object()

Row = tuple[object, ...]


class _DuplicateKeys(dict[str, Any]):
    """A decoded JSON object that had repeated keys; remembers which ones."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a plain dict, or a _DuplicateKeys marking repeated keys."""
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    marked = _DuplicateKeys(result)
    seen: set[str] = set()
    repeated: set[str] = set()
    for key, _ in pairs:
        (repeated if key in seen else seen).add(key)
    marked.duplicates = tuple(sorted(repeated))
    return marked


def _constant(name: str) -> float:
    """Keep NaN/±Infinity as floats so validation can reject them on the right field."""
    return float(name)


def parse_body(body: bytes) -> Any:
    """Decode JSON bytes; malformed, non-UTF-8 or absurdly nested input raises a 400."""
    try:
        return json.loads(body, object_pairs_hook=_object_pairs, parse_constant=_constant)
    except RecursionError:
        raise ProblemError(400, "The JSON body is nested too deeply.") from None
    except ValueError:
        # JSONDecodeError, UnicodeDecodeError and over-long integer literals are all ValueError.
        raise ProblemError(400, "The request body is not valid JSON.") from None


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
    """Validates decoded request bodies against one signature; reusable and thread-safe."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.max_rows = signature.max_rows
        self.names = frozenset(signature.field_names)
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

    def validate_body(self, payload: Any) -> list[Row]:
        """Return one tuple per record in signature field order (None = missing), or raise 422."""
        if not isinstance(payload, dict):
            raise _unprocessable([FieldError("(body)", "must be a JSON object")])
        errors: list[FieldError] = []
        if isinstance(payload, _DuplicateKeys):
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
            raise _unprocessable(errors)
        rows = [self._row(record, i, errors) for i, record in enumerate(data)]
        if errors:
            raise _unprocessable(errors)
        return rows

    def _row(self, record: Any, index: int, errors: list[FieldError]) -> Row:
        """Validate one record, appending problems to errors; returns the values in order."""
        if not isinstance(record, dict):
            errors.append(FieldError(f"data[{index}]", "must be an object"))
            return ()
        if isinstance(record, _DuplicateKeys):
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


def _unprocessable(errors: list[FieldError]) -> ProblemError:
    """A 422 carrying at most MAX_REPORTED_ERRORS field errors."""
    count = len(errors)
    detail = f"The request does not match the model signature ({count} problem(s))."
    return ProblemError(422, detail, tuple(errors[:MAX_REPORTED_ERRORS]))


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
