"""Local slot mechanics: materialise a package, keep a slot's keys, wait for the runtime to
report it ready, smoke-test it on loopback.

The local runtime (app.runtime) keeps the deployments table's STARTING/ACTIVE/DRAINING rows
running; it reports to MODELGATE_HOME/runtime/status.json and gives replicas only the digests
of their keys (runtime/keys/<deployment id>.json). The plaintext keys are kept encrypted
(Fernet, key file secrets/deployment-keys.key, 0600) in secrets/slot-keys/<deployment id>.json.
Nothing here logs a key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet, InvalidToken

from app.backends.base import ResourceNotFound, SlotKeys, SlotNotReady, SmokeResult, SmokeTestFailed
from app.backends.smoke import judge_answer
from app.keyfiles import load_or_create_fernet
from app.serving.keys import write_keys_file

HTTP_TIMEOUT = (2.0, 10.0)  # (connect, read) seconds for calls to a slot
RUNTIME_HOST = "127.0.0.1"
STATUS_STALE_SECONDS = 10.0


# --------------------------------------------------------------------------- paths


def runtime_dir(home: Path) -> Path:
    """MODELGATE_HOME/runtime: desired-state companions (keys digests, status)."""
    return Path(home) / "runtime"


def keys_file(home: Path, deployment_id: str) -> Path:
    """The digest-only keys file the replicas of a deployment read."""
    return runtime_dir(home) / "keys" / f"{deployment_id}.json"


def status_file(home: Path) -> Path:
    """The runtime's replica status report (written by app.runtime)."""
    return runtime_dir(home) / "status.json"


def model_dir(home: Path, name: str, version: str) -> Path:
    """Where a model package is materialised for the runtime."""
    return Path(home) / "models" / name / str(version)


def url_of(port: int | None) -> str:
    """Loopback URL of a slot's shared port."""
    return f"http://{RUNTIME_HOST}:{port}" if port else ""


# --------------------------------------------------------------------------- keys


def _fernet(home: Path) -> Fernet:
    """The instance's key-encryption key for slot keys (secrets/, 0600)."""
    return load_or_create_fernet(Path(home) / "secrets" / "deployment-keys.key")


def _sealed_path(home: Path, deployment_id: str) -> Path:
    return Path(home) / "secrets" / "slot-keys" / f"{deployment_id}.json"


def store_keys(home: Path, deployment_id: str, keys: SlotKeys) -> None:
    """Keep a slot's keys encrypted, then write their digests for its replicas.

    The sealed copy first: after an interrupted change it is the truth the digests and the
    gateway are re-synced from.
    """
    fernet = _fernet(home)
    sealed = json.dumps({"primary": fernet.encrypt(keys.primary.encode()).decode(),
                         "secondary": fernet.encrypt(keys.secondary.encode()).decode()})
    path = _sealed_path(home, deployment_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(sealed)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    digests = keys_file(home, deployment_id)
    digests.parent.mkdir(parents=True, exist_ok=True)
    write_keys_file(digests, keys.primary, keys.secondary)


def load_keys(home: Path, deployment_id: str,
              legacy: Callable[[str], tuple[str, str] | None] | None = None) -> SlotKeys:
    """A slot's keys; ``legacy`` yields the Fernet tokens a slot made before this store.

    Raises:
        ResourceNotFound: no keys are kept for the slot.
    """
    fernet = _fernet(home)
    try:
        data = json.loads(_sealed_path(home, deployment_id).read_text(encoding="utf-8"))
        tokens: tuple[str, str] | None = (str(data["primary"]), str(data["secondary"]))
    except (OSError, ValueError, KeyError, TypeError):
        tokens = legacy(deployment_id) if legacy is not None else None
    if tokens is None:
        raise ResourceNotFound(f"no keys are kept for slot {deployment_id}")
    try:
        return SlotKeys(fernet.decrypt(tokens[0].encode()).decode(),
                        fernet.decrypt(tokens[1].encode()).decode())
    except InvalidToken:
        raise ResourceNotFound(f"the keys of slot {deployment_id} cannot be decrypted with "
                               "secrets/deployment-keys.key") from None


def forget_keys(home: Path, deployment_id: str) -> None:
    """Drop a retired slot's sealed keys (its replicas keep their digests until they exit)."""
    _sealed_path(home, deployment_id).unlink(missing_ok=True)


# --------------------------------------------------------------------------- status


def read_status(home: Path) -> dict[str, Any]:
    """The runtime's status report, with `fresh` false when it is missing or stale."""
    try:
        data: dict[str, Any] = json.loads(status_file(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"fresh": False, "deployments": {}}
    try:
        updated = dt.datetime.fromisoformat(str(data.get("updated_at")))
        fresh = (dt.datetime.now(dt.UTC) - updated).total_seconds() < STATUS_STALE_SECONDS
    except (ValueError, TypeError):
        fresh = False
    data["fresh"] = fresh
    return data


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
               checkpoint: Callable[[], None]) -> str:
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
            url = url_of(int(entry["port"]))
            if ready >= replicas and _ready(url):
                return url
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
    except ValueError:
        body = None  # judged as an answer without predictions
    return judge_answer(body, signature)


def key_status(url: str, key: str, signature: Mapping[str, Any]) -> int:
    """The HTTP status a slot answers to the example under a key.

    Raises:
        SmokeTestFailed: the slot did not answer.
    """
    try:
        return score_status(url, key, signature.get("example") or {}).status_code
    except requests.RequestException as exc:
        raise SmokeTestFailed(f"key check: the slot did not answer ({type(exc).__name__})"
                              ) from None


def check_key(url: str, key: str, signature: Mapping[str, Any], expected: int) -> None:
    """Require a slot to answer `expected` (200 or 401) to the example under a key.

    Raises:
        SmokeTestFailed: it answered something else (the message names which key role).
    """
    status = key_status(url, key, signature)
    if status != expected:
        raise SmokeTestFailed(f"key check: got HTTP {status}, expected {expected}")

