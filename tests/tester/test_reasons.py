"""Reason codes in the score tester: sentences from app.labels, top 3 per batch row, and a
model that cannot explain still scores. The 'gateway' here is a real scoring replica (the
tester's calls speak the same wire format; the whole chain runs in tests/e2e)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from app.labels import field_label, field_value_label, reason_sentence
from app.ml.reasons import EXPLAIN_FILE
from app.services import scoring
from tests.serving.conftest import Replica, make_keys, start_replica
from tests.serving.modelpkg import build_model_package, load_frame


@pytest.mark.parametrize("factor,sentence", [
    ({"field": "Checking account", "value": "little", "direction": "raises"},
     "Checking account: little — raises the risk"),
    ({"field": "Saving accounts", "value": None, "direction": "lowers"},
     "Savings account: no account — lowers the risk"),
    ({"field": "Credit amount", "value": 12000, "direction": "raises"},
     "Credit amount: 12,000 DM — raises the risk"),
    ({"field": "Duration", "value": 48.0, "direction": "raises"},
     "Duration: 48 months — raises the risk"),
    ({"field": "Job", "value": 0, "direction": "lowers"},
     "Job: unskilled, non-resident — lowers the risk"),
    ({"field": "Sex", "value": "male", "direction": "neutral"},
     "Sex: male — no effect on the risk"),
])
def test_reason_codes_read_as_a_credit_officer_says_them(factor: dict[str, object],
                                                         sentence: str) -> None:
    assert reason_sentence(factor) == sentence


def test_unknown_fields_and_values_fall_back_to_their_names() -> None:
    assert field_label("Income") == "Income"
    assert field_value_label("Income", 1500.5) == "1,500.5"
    assert field_value_label("Region", None) == "not given"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Replica]]:
    """A GB replica that explains and an LR replica whose package predates reason codes."""
    root = tmp_path_factory.mktemp("tester-reasons")
    gb = build_model_package(root / "gb", "gb")
    old = build_model_package(root / "old", "lr")
    (old / EXPLAIN_FILE).unlink()
    running = {name: start_replica(package, make_keys(root / name), root / f"{name}.log")
               for name, package in (("gb", gb), ("old", old))}
    yield running
    for replica in running.values():
        replica.stop()


def _records(count: int) -> list[dict[str, object]]:
    frame, _ = load_frame()
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in frame.head(count).to_dict("records")]


def test_a_batch_gets_the_top_three_reasons_per_row(replicas: dict[str, Replica]) -> None:
    replica = replicas["gb"]
    records = _records(30)
    records[7]["Age"] = 12  # refused on its own; the other rows are scored and explained
    result = scoring.score_records(f"{replica.url}/score", replica.keys.primary, records,
                                   verify=True, explain=True)
    assert result.status == 200
    assert "Age" in result.rows[7]["error"]
    explained = [row for i, row in enumerate(result.rows) if i != 7]
    assert all(len(row["reasons"]) == scoring.TOP_REASONS for row in explained)
    # the sentences are the first three factors of the replica's own answer
    direct = scoring.call_gateway(f"{replica.url}/score", replica.keys.primary,
                                  {"data": [records[0]], "explain": True}, verify=True)
    factors = direct.body["predictions"][0]["reasons"]["factors"]
    assert result.rows[0]["reasons"] == [reason_sentence(f) for f in factors[:3]]
    assert all(" — raises the risk" in s or " — lowers the risk" in s
               for row in explained for s in row["reasons"])
    plain = scoring.score_records(f"{replica.url}/score", replica.keys.primary, records[:3],
                                  verify=True)
    assert all("reasons" not in row for row in plain.rows)


def test_a_model_that_cannot_explain_is_still_scored(replicas: dict[str, Replica]) -> None:
    replica = replicas["old"]
    url = f"{replica.url}/score"
    result = scoring.score_records(url, replica.keys.primary, _records(5), verify=True,
                                   explain=True)
    assert result.status == 200
    assert all("label" in row and "reasons" not in row for row in result.rows)
    outcome, note = scoring.score_explained(url, replica.keys.primary,
                                            {"data": _records(1)}, verify=True)
    assert outcome.ok and "reasons" not in outcome.body["predictions"][0]
    assert note is not None and "explain.json" in note
    explained, none = scoring.score_explained(f"{replicas['gb'].url}/score",
                                              replicas["gb"].keys.primary,
                                              {"data": _records(1)}, verify=True)
    assert none is None and "reasons" in explained.body["predictions"][0]
