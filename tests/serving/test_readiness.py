"""Readiness: 503 until the model has loaded and passed its self-test; never ready on failure."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from app.serving.app import create_scoring_app
from app.serving.model import ModelLoadError, ScoringModel, load_model
from tests.serving.conftest import make_keys
from tests.serving.modelpkg import EXAMPLE, build_model_package

Check = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def run_app(app: web.Application, check: Check) -> None:
    """Serve app on a free loopback port and run check against it."""

    async def main() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with aiohttp.ClientSession() as session:
                await check(session, f"http://127.0.0.1:{site.port}")
        finally:
            await runner.cleanup()

    asyncio.run(main())


async def wait_status(session: aiohttp.ClientSession, url: str, status: int) -> None:
    """Poll url until it answers status (bounded)."""
    for _ in range(300):
        async with session.get(url) as response:
            if response.status == status:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered {status}")


def test_ready_only_after_self_test(lr_package: Path, tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    release = threading.Event()
    self_tested = threading.Event()

    def slow_loader(model_dir: Path) -> ScoringModel:
        release.wait(10)
        model = load_model(model_dir)  # load_model ends with the self-test
        self_tested.set()
        return model

    app = create_scoring_app(lr_package, keys.path, loader=slow_loader)
    auth = {"Authorization": f"Bearer {keys.primary}", "Content-Type": "application/json"}

    async def check(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(f"{base}/health/live") as response:
            assert response.status == 200
        async with session.get(f"{base}/health/ready") as response:
            assert response.status == 503
            assert response.content_type == "application/problem+json"
        async with session.post(
            f"{base}/score", data=json.dumps({"data": [EXAMPLE]}), headers=auth
        ) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "1"
        async with session.get(f"{base}/openapi.json") as response:
            assert response.status == 503
        release.set()
        await wait_status(session, f"{base}/health/ready", 200)
        assert self_tested.is_set()
        async with session.post(
            f"{base}/score", data=json.dumps({"data": [EXAMPLE]}), headers=auth
        ) as response:
            assert response.status == 200

    run_app(app, check)


def test_failed_self_test_never_becomes_ready(lr_package: Path, tmp_path: Path) -> None:
    package = build_model_package(tmp_path / "pkg", "lr")
    signature = json.loads((package / "signature.json").read_text())
    signature["example"]["Age"] = 5  # the example violates its own signature
    (package / "signature.json").write_text(json.dumps(signature))
    keys = make_keys(tmp_path)
    loader_errors: list[Exception] = []

    def loader(model_dir: Path) -> ScoringModel:
        try:
            return load_model(model_dir)
        except ModelLoadError as exc:
            loader_errors.append(exc)
            raise

    app = create_scoring_app(package, keys.path, loader=loader)

    async def check(session: aiohttp.ClientSession, base: str) -> None:
        for _ in range(200):
            if loader_errors:
                break
            await asyncio.sleep(0.02)
        assert loader_errors
        async with session.get(f"{base}/health/ready") as response:
            assert response.status == 503
            body = await response.json(content_type=None)
            assert body["detail"] == "The model failed to load."

    run_app(app, check)


def test_wrong_classes_are_refused(lr_package: Path, tmp_path: Path) -> None:
    package = build_model_package(tmp_path / "pkg", "lr")
    signature = json.loads((package / "signature.json").read_text())
    signature["classes"] = ["no", "yes"]
    signature["positive_class"] = "yes"
    (package / "signature.json").write_text(json.dumps(signature))
    try:
        load_model(package)
    except ModelLoadError as exc:
        assert "classes" in str(exc)
    else:
        raise AssertionError("a package whose classes differ from classes_ must not load")
