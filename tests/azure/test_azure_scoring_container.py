"""The scoring container Azure ML runs: modelgate's scoring service in its Azure ML mode, on a
model laid out as Azure ML mounts a registered MLflow model; its Dockerfile target; the
environment (image + inference config) deployments use."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.backends.azure import serving_image
from app.backends.base import BackendError
from app.serving import azureml

ROOT = Path(__file__).resolve().parents[2]
MODEL = "german-credit"
VERSION = "4"
EXAMPLE = {"Age": 20, "Sex": "male", "Job": 0, "Housing": "own", "Saving accounts": "little",
           "Checking account": "little", "Credit amount": 100, "Duration": 48,
           "Purpose": "radio/TV"}


@pytest.fixture(scope="module")
def azureml_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained by the training job's own entry, laid out as Azure ML mounts a
    registered model: ``azureml-models/<name>/<version>/<output folder>``."""
    from app.ml import train_job

    root = tmp_path_factory.mktemp("azureml-app") / "azureml-models"
    config = root.parent / "config.json"
    config.write_text(json.dumps({"name": MODEL, "cv_folds": 2, "importance_repeats": 1,
                                  "candidates": [{"family": "logistic_regression"}]}))
    train_job.run(ROOT / "data" / "german_credit_data.csv", root / MODEL / VERSION / "model",
                  config, dataset_name=MODEL, dataset_version=1)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def container(azureml_models: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The container's command (the image's ENTRYPOINT) on a loopback port."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "AZUREML_MODEL_DIR": str(azureml_models / MODEL / VERSION)}
    env.pop(azureml.VERSION_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.serving.azureml", "--host", "127.0.0.1", "--port",
         str(port), "--stage-dir", str(tmp_path / "stage"), "--drain-seconds", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if requests.get(f"{base}/health/live", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the container never answered liveness"
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _wait_ready(base: str) -> requests.Response:
    deadline = time.monotonic() + 60
    while True:
        answer = requests.get(f"{base}/health/ready", timeout=5)
        if answer.status_code == 200:
            return answer
        assert answer.status_code == 503, answer.text
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)


def test_the_container_serves_the_mounted_model_on_azure_mls_routes(
        container: tuple[str, subprocess.Popen], azureml_models: Path) -> None:
    base, proc = container
    ready = _wait_ready(base).json()
    assert ready["status"] == "ready"
    assert ready["model"] == {"name": MODEL, "version": VERSION}, \
        "the version comes from where Azure ML mounts the model"

    # No key: the endpoint's router checked it before the request got here.
    scored = requests.post(f"{base}/score", json={"data": [EXAMPLE, EXAMPLE]}, timeout=10)
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert body["model"] == {"name": MODEL, "version": VERSION}
    assert scored.headers["X-Model-Version"] == VERSION
    assert len(body["predictions"]) == 2
    signature = json.loads((azureml_models / MODEL / VERSION / "model" / "package" /
                            "signature.json").read_text())
    for prediction in body["predictions"]:
        probabilities = prediction["probabilities"]
        assert set(probabilities) == {"bad", "good"}
        assert sum(probabilities.values()) == pytest.approx(1.0)
        expected = "bad" if probabilities["bad"] >= signature["threshold"] else "good"
        assert prediction["label"] == expected

    # the same validation as every replica: an unknown category is a 422 problem
    bad = requests.post(f"{base}/score", json={"data": [{**EXAMPLE, "Housing": "castle"}]},
                        timeout=10)
    assert bad.status_code == 422
    assert bad.headers["Content-Type"].startswith("application/problem+json")
    assert requests.get(f"{base}/openapi.json", timeout=5).status_code == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_the_package_is_found_inside_the_mlflow_model_and_staged_with_the_version(
        azureml_models: Path, tmp_path: Path) -> None:
    mounted = azureml_models / MODEL / VERSION
    assert azureml.find_package(mounted) == mounted / "model" / "package"
    staged = azureml.stage_package(mounted, tmp_path / "a", env={})
    assert json.loads((staged / "signature.json").read_text())["version"] == VERSION
    assert (staged / "model.joblib").resolve() == \
        (mounted / "model" / "package" / "model.joblib").resolve()
    # the deployment's variable wins over the folder name
    staged = azureml.stage_package(mounted, tmp_path / "b",
                                   env={azureml.VERSION_ENV: "12"})
    assert json.loads((staged / "signature.json").read_text())["version"] == "12"
    # the mounted model is left as it was (read-only in Azure ML)
    original = json.loads((mounted / "model" / "package" / "signature.json").read_text())
    assert original["version"] is None


def test_nothing_to_serve_exits_with_the_reason(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "azureml-models" / MODEL / "2"
    empty.mkdir(parents=True)
    (empty / "MLmodel").write_text("flavors: {}\n")
    assert azureml.main(["--stage-dir", str(tmp_path / "s")],
                        env={azureml.MODEL_DIR_ENV: str(empty)}) == 3
    assert "no serving package" in caplog.text
    assert azureml.main([], env={}) == 3
    assert "AZUREML_MODEL_DIR is not set" in caplog.text
    # a package without a version anywhere
    unversioned = tmp_path / "custom-mount" / "latest"
    (unversioned / "pkg").mkdir(parents=True)
    (unversioned / "pkg" / "model.joblib").write_bytes(b"")
    (unversioned / "pkg" / "signature.json").write_text(json.dumps(
        {"name": MODEL, "version": None, "classes": ["bad", "good"],
         "fields": [{"name": "Age", "type": "integer"}]}))
    with pytest.raises(azureml.PackageNotFound, match="MODELGATE_MODEL_VERSION"):
        azureml.stage_package(unversioned, tmp_path / "s2", env={})


# --------------------------------------------------------------------------- the image


def _stages(text: str) -> list[dict[str, Any]]:
    """The Dockerfile's stages: name, base, and each instruction (continuations joined)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[dict[str, Any]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "base": parts[0], "instructions": []})
        else:
            stages[-1]["instructions"].append((keyword, rest.strip()))
    return stages


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"exec form expected: {value}"
    return [str(v) for v in parsed]


def test_the_dockerfile_has_an_azureml_scoring_target() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    by_name = {s["name"]: s for s in stages}
    scoring = by_name["azureml-scoring"]
    instructions = scoring["instructions"]
    kinds = [k for k, _ in instructions]
    assert scoring["base"].startswith("python:3.11")

    # multi-stage: the project comes in as the wheel the build stage made
    build = by_name["build"]
    assert any(k == "RUN" and "pip wheel" in v and "/wheels" in v
               for k, v in build["instructions"])
    assert ("COPY", "--from=build /wheels /wheels") in instructions
    assert any(k == "RUN" and "pip install" in v and "/wheels/" in v for k, v in instructions)

    # the command: the scoring service's Azure ML mode on the inference config's port
    entrypoint = _exec_form(dict(instructions)["ENTRYPOINT"])
    command = _exec_form(dict(instructions)["CMD"])
    assert entrypoint == ["python", "-m", "app.serving.azureml"]
    args = azureml.parse_args(command)
    assert args.port == serving_image.SCORING_PORT == azureml.PORT
    assert args.host == "0.0.0.0"
    assert dict(instructions)["EXPOSE"].split() == [str(serving_image.SCORING_PORT)]

    # not root, unbuffered logs (Azure ML collects stdout), no model baked in
    user = [v for k, v in instructions if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    env = " ".join(v for k, v in instructions if k == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "AZUREML_MODEL_DIR" not in env, "Azure ML sets it where it mounts the model"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")

    # `docker build .` (docker-compose.yml's build) still makes the panel's image
    last = stages[-1]
    assert last["name"] != "azureml-scoring"
    assert _exec_form(dict(last["instructions"])["CMD"]) == ["modelgate", "up"]


def test_the_deployment_environment_is_the_image_with_azure_mls_inference_routes(
        azure_backend: Any) -> None:
    env = serving_image.scoring_environment(azure_backend.ctx)
    assert env.image == azure_backend.ctx.azure.scoring_image
    # the body Azure ML receives for the deployment's environment version
    rest = env._to_rest_object().properties.as_dict()
    assert rest["image"] == "modelgateacr.azurecr.io/modelgate-scoring:0.1.0"
    assert rest["inferenceConfig"] == {
        "livenessRoute": {"port": 5001, "path": "/health/live"},
        "readinessRoute": {"port": 5001, "path": "/health/ready"},
        "scoringRoute": {"port": 5001, "path": "/score"},
    }
    # the paths are routes the scoring service answers
    from app.serving.app import create_scoring_app

    app = create_scoring_app(Path("/nonexistent"), Path("/nonexistent/keys.json"))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    for method, path in (("GET", serving_image.LIVENESS_PATH),
                         ("GET", serving_image.READINESS_PATH),
                         ("POST", serving_image.SCORING_PATH)):
        assert (method, path) in routes
    assert serving_image.deployment_variables("7") == {azureml.VERSION_ENV: "7"}


def test_no_scoring_image_names_the_setting(azure_pipeline: Any) -> None:
    import dataclasses

    from app.backends.azure.context import AzureContext

    blank = dataclasses.replace(azure_pipeline, azure=dataclasses.replace(
        azure_pipeline.azure, scoring_image=""))
    ctx = AzureContext.build(blank, credential=object(), env={})
    with pytest.raises(BackendError, match="azure.scoring_image is not set.*azureml-scoring"):
        serving_image.scoring_environment(ctx)
