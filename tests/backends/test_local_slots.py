"""The smoke test refuses a slot that answers wrongly, naming what was wrong but never the key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.backends.base import SmokeTestFailed
from app.backends.local.slots import check_key, smoke_test

KEY = "k" * 43
SIGNATURE = {"version": "3", "classes": ["bad", "good"], "example": {"Age": 30}}
GOOD = {"predictions": [{"label": "bad", "probabilities": {"bad": 0.7, "good": 0.3}}],
        "model": {"name": "german-credit", "version": "3"}}


class Slot:
    """A stub slot: 401 without the key, then whatever answer the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body: Any = GOOD
        self.anonymous_status = 401
        slot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                import json

                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                authorised = self.headers.get("Authorization") == f"Bearer {KEY}"
                status = slot.status if authorised else slot.anonymous_status
                data = json.dumps(slot.body if authorised else {"status": 401}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def slot() -> Iterator[Slot]:
    stub = Slot()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


def test_a_good_slot_passes(slot: Slot) -> None:
    result = smoke_test(slot.url, KEY, SIGNATURE)
    assert result.label == "bad" and result.model_version == "3"
    assert result.probabilities == {"bad": 0.7, "good": 0.3}


@pytest.mark.parametrize("change,reason", [
    ({"status": 500}, "HTTP 500"),
    ({"anonymous_status": 200}, "without a key got 200"),
    ({"body": {"predictions": [{"label": "bad"}]}}, "labelled probabilities"),
    ({"body": {**GOOD, "predictions": [{"label": "yes", "probabilities": {"yes": 1.0}}]}},
     "do not match the signature's classes"),
    ({"body": {**GOOD, "predictions": [{"label": "bad",
                                         "probabilities": {"bad": 0.7, "good": 0.7}}]}},
     "do not sum to 1"),
    ({"body": {**GOOD, "model": {"version": "2"}}}, "serves version 2, expected 3"),
])
def test_a_wrong_answer_fails_the_smoke_test(slot: Slot, change: dict[str, Any],
                                              reason: str) -> None:
    for name, value in change.items():
        setattr(slot, name, value)
    with pytest.raises(SmokeTestFailed) as caught:
        smoke_test(slot.url, KEY, SIGNATURE)
    assert reason in str(caught.value)
    assert KEY not in str(caught.value)


def test_unreachable_slot_and_key_checks(slot: Slot) -> None:
    check_key(slot.url, KEY, SIGNATURE, 200)
    check_key(slot.url, "old-key", SIGNATURE, 401)
    with pytest.raises(SmokeTestFailed, match="expected 200"):
        check_key(slot.url, "old-key", SIGNATURE, 200)
    slot.server.shutdown()
    slot.server.server_close()
    with pytest.raises(SmokeTestFailed, match="did not answer"):
        smoke_test(slot.url, KEY, SIGNATURE)
