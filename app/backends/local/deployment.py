"""Local deployment mechanics: materialise a package, wait for a slot, smoke-test it, point the
gateway at it. The desired state itself is the deployments table; app.runtime acts on it.

Nothing here logs or returns a key: callers pass keys in and get outcomes back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from app.backends.base import SlotEndpoint, SlotNotReady, SmokeResult, SmokeTestFailed
from app.services import gateway_config

HTTP_TIMEOUT = (2.0, 10.0)  # (connect, read) seconds for calls to a slot


def materialise(home: Path, registry: Any, name: str, version: str) -> Path:
    """Download a version's package to MODELGATE_HOME/models/<name>/<version> unless present."""
    target = Path(home) / "models" / name / str(version)
    if (target / "signature.json").is_file() and (target / "model.joblib").is_file():
        return target
    path: Path = registry.download_package(name, version, target)
    return path


def read_signature(package: Path) -> dict[str, Any]:
    """The package's signature.json."""
    data: dict[str, Any] = json.loads((package / "signature.json").read_text(encoding="utf-8"))
    return data


def _status_entry(home: Path, deployment_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(home) / "runtime" / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = data.get("deployments", {}).get(deployment_id)
    return entry if isinstance(entry, dict) else None


def wait_ready(home: Path, deployment_id: str, replicas: int, timeout: float,
               checkpoint: Callable[[], None]) -> SlotEndpoint:
    """Wait until the runtime reports every replica listening and /health/ready answers 200.

    Raises:
        SlotNotReady: not ready within timeout (the message says what the runtime saw).
    """
    deadline = time.monotonic() + timeout
    seen = "the runtime has not reported this slot (is `modelgate runtime` running?)"
    while time.monotonic() < deadline:
        checkpoint()
        entry = _status_entry(home, deployment_id)
        if entry is not None:
            ready = int(entry.get("replicas_ready", 0))
            restarts = sum(int(r.get("restarts", 0)) for r in entry.get("replicas", []))
            seen = (f"{ready} of {replicas} replicas ready, {restarts} restarts"
                    + (f", {entry['error']}" if entry.get("error") else ""))
            url = f"http://127.0.0.1:{entry['port']}"
            if ready >= replicas and _ready(url):
                return SlotEndpoint(deployment_id, url, replicas)
        time.sleep(0.2)
    raise SlotNotReady(f"the new slot was not ready within {timeout:.0f} s: {seen}; "
                       f"see logs/replicas/{deployment_id}-*.log")


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/health/ready", timeout=HTTP_TIMEOUT).status_code == 200
    except requests.RequestException:
        return False


def score_status(url: str, key: str | None, example: Mapping[str, Any]) -> requests.Response:
    """POST the example to a slot directly with a key (or none)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(f"{url}/score", data=json.dumps({"data": [dict(example)]}),
                         headers=headers, timeout=HTTP_TIMEOUT)


def smoke_test(url: str, key: str, signature: Mapping[str, Any]) -> SmokeResult:
    """Score the signature's example with the slot's own key; also check that no key gets 401.

    Raises:
        SmokeTestFailed: with what was wrong (never the key).
    """
    example = signature.get("example") or {}
    classes = sorted(str(c) for c in signature.get("classes", []))
    try:
        anonymous = score_status(url, None, example)
        response = score_status(url, key, example)
    except requests.RequestException as exc:
        raise SmokeTestFailed(f"smoke test: the slot did not answer ({type(exc).__name__})"
                              ) from None
    if anonymous.status_code != 401:
        raise SmokeTestFailed(f"smoke test: a request without a key got "
                              f"{anonymous.status_code}, expected 401")
    if response.status_code != 200:
        raise SmokeTestFailed(f"smoke test: the example got HTTP {response.status_code}, "
                              "expected 200")
    try:
        body = response.json()
        first = body["predictions"][0]
        probabilities = {str(k): float(v) for k, v in first["probabilities"].items()}
        label = str(first["label"])
        version = str(body["model"]["version"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise SmokeTestFailed("smoke test: the answer lacks predictions with labelled "
                              "probabilities") from None
    if sorted(probabilities) != classes or label not in classes:
        raise SmokeTestFailed(f"smoke test: labels {sorted(probabilities)} do not match the "
                              f"signature's classes {classes}")
    total = sum(probabilities.values())
    if not all(0.0 <= p <= 1.0 for p in probabilities.values()) or not math.isclose(
            total, 1.0, abs_tol=1e-6):
        raise SmokeTestFailed(f"smoke test: probabilities do not sum to 1 ({total:.6f})")
    expected = str(signature.get("version", ""))
    if expected and version != expected:
        raise SmokeTestFailed(f"smoke test: the slot serves version {version}, expected "
                              f"{expected}")
    return SmokeResult(label, probabilities, version)


def check_key(url: str, key: str, signature: Mapping[str, Any], expected: int) -> None:
    """Require a slot to answer `expected` (200 or 401) to the example under a key.

    Raises:
        SmokeTestFailed: it answered something else (the message names which key role).
    """
    try:
        status = score_status(url, key, signature.get("example") or {}).status_code
    except requests.RequestException as exc:
        raise SmokeTestFailed(f"key check: the slot did not answer ({type(exc).__name__})"
                              ) from None
    if status != expected:
        raise SmokeTestFailed(f"key check: got HTTP {status}, expected {expected}")


def point_gateway(home: Path, environment: str, url: str, key: str) -> None:
    """Switch the environment's backend URL and key in one atomic gateway config write."""
    gateway_config.set_backend(home, environment, url, key)


def point_gateway_key(home: Path, environment: str, key: str) -> None:
    """Change only the key the gateway presents to the environment's backend."""
    gateway_config.set_backend_key(home, environment, key)
