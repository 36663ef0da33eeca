"""The signature: every field with its domain, and rejection of records outside it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.ml.dataset import build_signature, infer_schema
from app.ml.signature import (
    DESIGN_EXAMPLE,
    FieldSpec,
    FieldType,
    Signature,
    SignatureFormatError,
)
from app.ml.validation import MAX_ERRORS, SignatureError, validate_records

FEATURES = ["Age", "Sex", "Job", "Housing", "Saving accounts", "Checking account",
            "Credit amount", "Duration", "Purpose"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def signature(csv_path: Path) -> Signature:
    return build_signature(infer_schema(csv_path), FEATURES, name="german-credit",
                           threshold=0.3)


def _record(**changes: Any) -> dict[str, Any]:
    rec = dict(DESIGN_EXAMPLE)
    for key, value in changes.items():
        name = key.replace("_", " ")
        if value is _DROP:
            rec.pop(name)
        else:
            rec[name] = value
    return rec


_DROP = object()


def test_signature_lists_every_field_with_domain(signature: Signature) -> None:
    fields = {f.name: f for f in signature.fields}
    assert list(fields) == FEATURES
    ranges = {n: (f.minimum, f.maximum) for n, f in fields.items() if f.type is not
              FieldType.CATEGORY}
    assert ranges == {"Age": (18, 120), "Job": (0, 3), "Credit amount": (1, 1_000_000),
                      "Duration": (1, 120)}
    assert all(fields[n].type is FieldType.INTEGER for n in ranges)
    cats = {n: f.categories for n, f in fields.items() if f.type is FieldType.CATEGORY}
    assert cats == {
        "Sex": ("female", "male"),
        "Housing": ("free", "own", "rent"),
        "Saving accounts": ("little", "moderate", "quite rich", "rich"),
        "Checking account": ("little", "moderate", "rich"),
        "Purpose": ("business", "car", "domestic appliances", "education",
                    "furniture/equipment", "radio/TV", "repairs", "vacation/others"),
    }
    assert {n for n, f in fields.items() if f.nullable} == {"Saving accounts",
                                                              "Checking account"}


def test_signature_json_follows_the_contract(signature: Signature) -> None:
    data = json.loads(signature.with_version("3").to_json())
    assert set(data) == {"name", "version", "target", "classes", "positive_class", "threshold",
                         "max_rows", "fields", "example"}
    assert (data["name"], data["version"], data["target"]) == ("german-credit", "3", "Risk")
    assert (data["classes"], data["positive_class"]) == (["bad", "good"], "bad")
    assert data["max_rows"] == 1000
    assert data["fields"][0] == {"name": "Age", "type": "integer", "minimum": 18,
                                 "maximum": 120, "nullable": False}
    assert data["fields"][4] == {"name": "Saving accounts", "type": "category",
                                 "categories": ["little", "moderate", "quite rich", "rich"],
                                 "nullable": True}
    assert data["example"] == dict(DESIGN_EXAMPLE)
    assert Signature.from_dict(data) == signature.with_version("3")


def test_design_example_passes_and_is_normalised(signature: Signature) -> None:
    [rec] = validate_records(signature, [dict(DESIGN_EXAMPLE)])
    assert rec == dict(DESIGN_EXAMPLE)
    assert list(rec) == FEATURES


def test_missing_or_null_account_means_no_account(signature: Signature) -> None:
    recs = validate_records(signature, [
        _record(Saving_accounts=_DROP, Checking_account=_DROP),
        _record(Saving_accounts=None, Checking_account=None),
    ])
    for rec in recs:
        assert rec["Saving accounts"] is None and rec["Checking account"] is None


def test_integral_float_counts_as_integer(signature: Signature) -> None:
    [rec] = validate_records(signature, [_record(Age=30.0)])
    assert rec["Age"] == 30 and isinstance(rec["Age"], int)


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        pytest.param(_record(Age=_DROP), "data[0].Age", "required field missing", id="missing"),
        pytest.param(_record(Age=None), "data[0].Age", "must not be null", id="null"),
        pytest.param(_record(Sex=None), "data[0].Sex", "must not be null", id="null-category"),
        pytest.param(_record(Income=5), "data[0].Income", "unknown field", id="unknown-field"),
        pytest.param(_record(Age=True), "data[0].Age", "must be an integer", id="bool"),
        pytest.param(_record(Age="20"), "data[0].Age", "must be an integer", id="string-number"),
        pytest.param(_record(Credit_amount="100"), "data[0].Credit amount",
                     "must be an integer", id="string-amount"),
        pytest.param(_record(Age=20.5), "data[0].Age", "must be an integer", id="fraction"),
        pytest.param(_record(Age=[20]), "data[0].Age", "must be an integer", id="list"),
        pytest.param(_record(Age=math.nan), "data[0].Age", "finite", id="nan"),
        pytest.param(_record(Duration=math.inf), "data[0].Duration", "finite", id="infinity"),
        pytest.param(_record(Duration=-math.inf), "data[0].Duration", "finite",
                     id="minus-infinity"),
        pytest.param(_record(Age=17), "data[0].Age", "must be ≥ 18", id="too-young"),
        pytest.param(_record(Age=121), "data[0].Age", "must be ≤ 120", id="too-old"),
        pytest.param(_record(Job=4), "data[0].Job", "must be ≤ 3", id="job"),
        pytest.param(_record(Credit_amount=0), "data[0].Credit amount",
                     "must be ≥ 1", id="amount-zero"),
        pytest.param(_record(Credit_amount=10**9), "data[0].Credit amount",
                     "must be ≤ 1e+06", id="amount-huge"),
        pytest.param(_record(Duration=0), "data[0].Duration", "must be ≥ 1",
                     id="duration"),
        pytest.param(_record(Sex="robot"), "data[0].Sex",
                     "unknown category; allowed: 'female', 'male'",
                     id="unknown-category"),
        pytest.param(_record(Purpose="radio/tv"), "data[0].Purpose", "unknown category",
                     id="category-case"),
        pytest.param(_record(Saving_accounts="none"), "data[0].Saving accounts",
                     "unknown category", id="nullable-category-checked"),
        pytest.param(_record(Housing=1), "data[0].Housing", "must be a string",
                     id="category-not-string"),
        pytest.param("not a record", "data[0]", "must be an object", id="not-object"),
    ],
)
def test_out_of_domain_record_is_rejected_naming_the_field(
    signature: Signature, record: Any, field: str, message: str
) -> None:
    with pytest.raises(SignatureError) as caught:
        validate_records(signature, [record])
    errors = caught.value.as_dicts()
    assert len(errors) == 1, errors
    assert errors[0]["field"] == field
    assert message in errors[0]["message"]
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param([], "at least one record", id="empty"),
        pytest.param([dict(DESIGN_EXAMPLE)] * 1001, "too many records; at most 1000",
                     id="too-many"),
        pytest.param({"Age": 20}, "must be an array of records", id="not-a-list"),
        pytest.param(None, "must be an array of records", id="null"),
    ],
)
def test_bad_data_list_is_rejected(signature: Signature, payload: Any, message: str) -> None:
    with pytest.raises(SignatureError) as caught:
        validate_records(signature, payload)
    assert caught.value.as_dicts() == [{"field": "data", "message": caught.value.errors[0].message}]
    assert message in caught.value.errors[0].message


def test_max_rows_exactly_is_accepted(signature: Signature) -> None:
    assert len(validate_records(signature, [dict(DESIGN_EXAMPLE)] * 1000)) == 1000


def test_errors_name_the_row_and_are_all_reported(signature: Signature) -> None:
    records = [_record(), _record(Age=200, Sex="x"), _record(Duration=_DROP)]
    with pytest.raises(SignatureError) as caught:
        validate_records(signature, records)
    assert [e["field"] for e in caught.value.as_dicts()] == [
        "data[1].Age", "data[1].Sex", "data[2].Duration"]


def test_error_list_is_capped(signature: Signature) -> None:
    with pytest.raises(SignatureError) as caught:
        validate_records(signature, [_record(Age=1, Job=9)] * 200)
    assert len(caught.value.errors) == MAX_ERRORS


def test_number_fields_accept_ints_and_reject_bools() -> None:
    sig = Signature(name="t", fields=(FieldSpec("x", FieldType.NUMBER, minimum=0, maximum=1),))
    assert validate_records(sig, [{"x": 1}]) == [{"x": 1.0}]
    assert isinstance(validate_records(sig, [{"x": 0}])[0]["x"], float)
    with pytest.raises(SignatureError, match="must be a number"):
        validate_records(sig, [{"x": False}])
    with pytest.raises(SignatureError, match="must be ≤ 1"):
        validate_records(sig, [{"x": 1.5}])


def test_unknown_numeric_columns_fall_back_to_observed_range(csv_path: Path) -> None:
    sig = build_signature(infer_schema(csv_path), [*FEATURES, "Sno"], name="t",
                          bounds={"Age": (21, 99)})
    fields = {f.name: f for f in sig.fields}
    assert (fields["Sno"].minimum, fields["Sno"].maximum) == (0, 999)
    assert (fields["Age"].minimum, fields["Age"].maximum) == (21, 99)
    # Bounds were replaced wholesale: Duration falls back to the observed 4-72.
    assert (fields["Duration"].minimum, fields["Duration"].maximum) == (4, 72)
    # DESIGN's example (Age 20, Credit amount 100) no longer fits, so another one is built.
    validate_records(sig, [dict(sig.example)])
    assert sig.example != {**DESIGN_EXAMPLE, "Sno": sig.example["Sno"]}


def _contract(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "m", "version": "1", "classes": ["bad", "good"], "positive_class": "bad",
        "threshold": 0.5, "max_rows": 10,
        "fields": [{"name": "Age", "type": "integer", "minimum": 18, "maximum": 120},
                   {"name": "Sex", "type": "category", "categories": ["female", "male"]}],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"fields": []}, id="no-fields"),
        pytest.param({"fields": [{"name": "Age", "type": "integer"}] * 2}, id="duplicate-name"),
        pytest.param({"fields": [{"type": "integer"}]}, id="unnamed-field"),
        pytest.param({"fields": [{"name": "Age", "type": "text"}]}, id="unknown-type"),
        pytest.param({"fields": [{"name": "Sex", "type": "category", "categories": []}]},
                     id="no-categories"),
        pytest.param({"fields": [{"name": "Sex", "type": "category", "categories": [1]}]},
                     id="non-string-category"),
        pytest.param({"fields": [{"name": "Age", "type": "integer", "maximum": math.inf}]},
                     id="infinite-bound"),
        pytest.param({"fields": [{"name": "Age", "type": "integer", "minimum": "18"}]},
                     id="string-bound"),
        pytest.param({"classes": ["bad"]}, id="one-class"),
        pytest.param({"positive_class": "risky"}, id="positive-not-a-class"),
        pytest.param({"threshold": 1.5}, id="threshold-above-1"),
        pytest.param({"threshold": math.nan}, id="threshold-nan"),
        pytest.param({"max_rows": 0}, id="max-rows-0"),
        pytest.param({"name": None, "classes": None}, id="classes-null"),
    ],
)
def test_inconsistent_signature_json_is_a_format_error(changes: dict[str, Any]) -> None:
    Signature.from_dict(_contract())  # the base document is valid
    with pytest.raises(SignatureFormatError):
        Signature.from_dict(_contract(**changes))


def test_load_reports_unreadable_files_as_format_errors(tmp_path: Path) -> None:
    path = tmp_path / "signature.json"
    with pytest.raises(SignatureFormatError, match="cannot read"):
        Signature.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SignatureFormatError, match="must hold an object"):
        Signature.load(path)
    path.write_text(json.dumps(_contract()), encoding="utf-8")
    assert Signature.load(path).feature_names == ("Age", "Sex")


def test_label_uses_threshold_on_positive_class(signature: Signature) -> None:
    assert signature.label_for(0.3) == "bad"
    assert signature.label_for(0.29) == "good"
    assert signature.negative_class == "good"


def test_module_imports_without_pandas_or_sklearn() -> None:
    """The scoring hot path imports these two; neither may pull in heavy libraries."""
    code = ("import sys, app.ml.signature, app.ml.validation; "
            "heavy = [m for m in ('pandas', 'sklearn', 'numpy', 'mlflow') if m in sys.modules]; "
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""


def test_bounds_must_be_usable(csv_path: Path) -> None:
    schema = infer_schema(csv_path)
    with pytest.raises(ValueError, match="inverted"):
        build_signature(schema, FEATURES, name="t", bounds={"Age": (50, 20)})
    with pytest.raises(ValueError, match="exclude all observed"):
        build_signature(schema, FEATURES, name="t", bounds={"Age": (80, 120)})
