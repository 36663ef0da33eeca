"""Parse a score request body and validate it against the model signature (the hot path).

The rules live in :class:`app.ml.validation.RecordValidator` (shared with training and the
panel, stdlib only); this module adds the HTTP side: malformed JSON is a 400, a body that
does not match the signature a 422 problem carrying the field errors.
"""

from __future__ import annotations

import json
from typing import Any

from app.ml import validation as _validation
from app.ml.validation import MAX_ERRORS, Row, object_pairs_hook
from app.ml.validation import FieldError as SignatureFieldError
from app.serving.errors import FieldError, ProblemError

__all__ = ["MAX_REPORTED_ERRORS", "RecordValidator", "Row", "parse_body"]

MAX_REPORTED_ERRORS = MAX_ERRORS


def _constant(name: str) -> float:
    """Keep NaN/±Infinity as floats so validation can reject them on the right field."""
    return float(name)


def parse_body(body: bytes) -> Any:
    """Decode JSON bytes; malformed, non-UTF-8 or absurdly nested input raises a 400."""
    try:
        return json.loads(body, object_pairs_hook=object_pairs_hook, parse_constant=_constant)
    except RecursionError:
        raise ProblemError(400, "The JSON body is nested too deeply.") from None
    except ValueError:
        # JSONDecodeError, UnicodeDecodeError and over-long integer literals are all ValueError.
        raise ProblemError(400, "The request body is not valid JSON.") from None


class RecordValidator(_validation.RecordValidator):
    """The shared validator, raising a 422 ProblemError instead of SignatureError."""

    def reject(self, errors: list[SignatureFieldError]) -> Exception:
        """A 422 carrying at most MAX_REPORTED_ERRORS field errors (the count names all)."""
        count = f"{len(errors)} problem" + ("" if len(errors) == 1 else "s")
        detail = f"The request does not match the model signature ({count})."
        shown = tuple(FieldError(e.field, e.message) for e in errors[:MAX_REPORTED_ERRORS])
        return ProblemError(422, detail, shown)
