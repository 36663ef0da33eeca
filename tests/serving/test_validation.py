"""Request parsing and validation against signature.json (no HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ml.signature import Signature
from app.serving.errors import ProblemError
from app.serving.validation import RecordValidator, parse_body
from tests.serving.modelpkg import EXAMPLE, signature_dict

VALIDATOR = RecordValidator(Signature.from_dict(signature_dict()))


def validate(raw: bytes) -> list[tuple[object, ...]]:
    """Parse then validate a raw body."""
    return VALIDATOR.validate_body(parse_body(raw))


def problem(raw: bytes) -> ProblemError:
    """The ProblemError a raw body raises."""
    with pytest.raises(ProblemError) as info:
        validate(raw)
    return info.value


def record(**changes: Any) -> dict[str, Any]:
    """The example record with some fields replaced (None deletes the field)."""
    out = dict(EXAMPLE)
    for key, value in changes.items():
        name = key.replace("_", " ")
        if value is ...:
            out.pop(name)
        else:
            out[name] = value
    return out


def body(*records: dict[str, Any]) -> bytes:
    """A request body with these records."""
    return json.dumps({"data": list(records)}).encode()


def fields_of(error: ProblemError) -> list[str]:
    """The field paths a 422 names."""
    return [e.field for e in error.errors]


def test_example_is_valid_and_ordered_like_the_signature() -> None:
    (row,) = validate(body(record()))
    assert row == (20, "male", 0, "own", "little", "little", 100, 48, "radio/TV")


def test_missing_or_null_account_means_no_account() -> None:
    rows = validate(body(record(Saving_accounts=...), record(Checking_account=None)))
    assert rows[0][4] is None and rows[1][5] is None


@pytest.mark.parametrize("raw", [b"", b"{", b'{"data": [}', b"\xff\xfe\x00", b"[1,]", b"nul"])
def test_malformed_json_is_400(raw: bytes) -> None:
    assert problem(raw).status == 400


def test_deeply_nested_json_is_400() -> None:
    assert problem(b"[" * 100_000 + b"]" * 100_000).status == 400


def test_huge_integer_literal_is_400_not_500() -> None:
    assert problem(b'{"data": [{"Age": ' + b"9" * 5000 + b"}]}").status == 400


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"Age": ...}, "data[0].Age"),  # missing required field
        ({"Age": None}, "data[0].Age"),  # null where not nullable
        ({"Age": "old"}, "data[0].Age"),  # wrong type
        ({"Age": True}, "data[0].Age"),  # bool is not an integer
        ({"Age": 20.5}, "data[0].Age"),  # not integral
        ({"Age": -5}, "data[0].Age"),  # out of range
        ({"Duration": 10_000}, "data[0].Duration"),
        ({"Credit_amount": 2**80}, "data[0].Credit amount"),
        ({"Sex": "unknown"}, "data[0].Sex"),  # unknown category
        ({"Purpose": "A499"}, "data[0].Purpose"),
        ({"Housing": 1}, "data[0].Housing"),
        ({"Saving_accounts": ["little"]}, "data[0].Saving accounts"),
    ],
)
def test_schema_violation_names_the_field(changes: dict[str, Any], field: str) -> None:
    error = problem(body(record(**{k.replace(" ", "_"): v for k, v in changes.items()})))
    assert error.status == 422
    assert field in fields_of(error)


def test_integral_float_is_an_integer() -> None:
    assert validate(body(record(Age=30.0)))[0][0] == 30.0


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
def test_non_finite_numbers_are_422_on_their_field(literal: bytes) -> None:
    raw = body(record()).replace(b'"Age": 20', b'"Age": ' + literal)
    error = problem(raw)
    assert error.status == 422 and fields_of(error) == ["data[0].Age"]
    assert "finite" in error.errors[0].message


def test_unknown_fields_and_duplicate_keys_are_rejected() -> None:
    error = problem(body(record(extra=1)))
    assert error.status == 422 and fields_of(error) == ["data[0].extra"]
    raw = body(record()).replace(b'"Age": 20', b'"Age": 20, "Age": 21')
    error = problem(raw)
    assert error.status == 422 and fields_of(error) == ["data[0].Age"]
    assert error.errors[0].message == "duplicate key"
    error = problem(b'{"data": [], "data": []}')
    assert "data" in fields_of(error)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[]", "(body)"),
        (b"1", "(body)"),
        (b"{}", "data"),
        (b'{"data": {}}', "data"),
        (b'{"data": []}', "data"),
        (b'{"data": [1]}', "data[0]"),
        (b'{"input_data": []}', "input_data"),
    ],
)
def test_body_shape_errors(raw: bytes, field: str) -> None:
    error = problem(raw)
    assert error.status == 422 and field in fields_of(error)


def test_row_limit() -> None:
    assert len(validate(body(*[record()] * 1000))) == 1000
    error = problem(body(*[record()] * 1001))
    assert error.status == 422 and fields_of(error) == ["data"]


def test_errors_are_capped_and_long_keys_shortened() -> None:
    error = problem(body(*[record(Age="x")] * 500))
    assert len(error.errors) == 50 and "500" in error.detail
    error = problem(body(record(**{"k" * 5000: 1})))
    assert all(len(e.field) < 100 for e in error.errors)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.dictionaries(
        st.sampled_from(list(EXAMPLE) + ["junk"]),
        JSON_VALUES | st.sampled_from(["male", "own", "little", "car"]) | st.integers(0, 200),
    )
)
def test_any_record_is_valid_or_a_422(rec: dict[str, Any]) -> None:
    raw = json.dumps({"data": [rec]}).encode()
    try:
        rows = validate(raw)
    except ProblemError as error:
        assert error.status == 422 and error.errors
    else:
        assert len(rows) == 1


def test_the_problem_count_reads_as_english() -> None:
    one = problem(body(record(Housing=1)))
    assert "(1 problem)" in one.detail and "problem(s)" not in one.detail
    two = problem(body(record(Housing=1, Age="old")))
    assert "(2 problems)" in two.detail
