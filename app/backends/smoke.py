"""What every backend's smoke test requires of a slot's answer to the signature's example."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.backends.base import SmokeResult, SmokeTestFailed


def judge_answer(body: Any, signature: Mapping[str, Any], prefix: str = "smoke test"
                 ) -> SmokeResult:
    """Labelled probabilities of the signature's classes summing to 1, from the version the
    signature names; ``prefix`` starts every failure message.

    Raises:
        SmokeTestFailed: with what was wrong.
    """
    classes = sorted(str(c) for c in signature.get("classes", []))
    try:
        first = body["predictions"][0]
        probabilities = {str(k): float(v) for k, v in first["probabilities"].items()}
        label = str(first["label"])
        version = str(body["model"]["version"])
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise SmokeTestFailed(f"{prefix}: the answer lacks predictions with labelled "
                              "probabilities") from None
    if sorted(probabilities) != classes or label not in classes:
        raise SmokeTestFailed(f"{prefix}: labels {sorted(probabilities)} do not match the "
                              f"signature's classes {classes}")
    total = sum(probabilities.values())
    if not all(0.0 <= p <= 1.0 for p in probabilities.values()) or not math.isclose(
            total, 1.0, abs_tol=1e-6):
        raise SmokeTestFailed(f"{prefix}: probabilities do not sum to 1 ({total:.6f})")
    expected = str(signature.get("version") or "")
    if expected and version != expected:
        raise SmokeTestFailed(f"{prefix}: the slot serves version {version}, expected "
                              f"{expected}")
    return SmokeResult(label, probabilities, version)
