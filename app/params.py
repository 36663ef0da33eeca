"""Integer URL and query parameters, bounded to what the database's INTEGER columns store.

A number past a column's range that reaches a query makes the driver fail (SQLite above
2^63 − 1, PostgreSQL above 2^31 − 1): a 500. Every integer path parameter uses the `id`
converter and every integer query parameter goes through `int_arg`, so out-of-range input is
a 404 or a 422 naming the parameter, and never reaches the database.
"""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter, Map

from app.errors import ValidationError

SQL_INT_MAX = 2**31 - 1  # the SQL standard INTEGER (PostgreSQL's int4); SQLite's is wider
_MAX_DIGITS = len(str(SQL_INT_MAX))


class IdConverter(IntegerConverter):
    """`<id:name>`: a decimal id from 1 to 2^31 − 1; anything else in its place is a 404."""

    regex = r"\d{1,20}"  # longer digit runs never match (and are never parsed)

    def __init__(self, map: Map) -> None:  # noqa: A002 (Werkzeug's parameter name)
        super().__init__(map, min=1, max=SQL_INT_MAX)

    def to_python(self, value: str) -> int:
        if not is_id(value):
            raise NotFound(f"{value} is not an id: ids in the URL run from 1 to {SQL_INT_MAX}")
        return int(value)


def register_converters(app: object) -> None:
    """Make `<id:…>` available to every blueprint of a Flask app."""
    app.url_map.converters["id"] = IdConverter  # type: ignore[attr-defined]


def is_id(text: str) -> bool:
    """True if `text` is a decimal id from 1 to 2^31 − 1 (what the `id` converter accepts)."""
    return (text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS
            and 1 <= int(text) <= SQL_INT_MAX)


def int_arg(name: str, default: int, *, minimum: int = 0, maximum: int = SQL_INT_MAX) -> int:
    """Read an integer query parameter, or raise a 422 naming it when it is not one in range."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > _MAX_DIGITS + 1:
        raise _invalid(name, f"must be a whole number from {minimum} to {maximum}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise _invalid(name, f"must be from {minimum} to {maximum}")
    return value


def _invalid(name: str, message: str) -> ValidationError:
    return ValidationError(f"query parameter {name} {message}",
                           errors=[{"field": name, "message": message}])
