"""The scoring service as an Azure ML custom container: ``python -m app.serving.azureml``.

Azure ML Kubernetes online deployments run the ``azureml-scoring`` image (Dockerfile) with the
inference config app/backends/azure/serving_image.py gives: liveness ``GET /health/live``,
readiness ``GET /health/ready`` and scoring ``POST /score``, all on port 5001 — the same
handlers as every other scoring replica (app/serving/app.py).

What differs from a local replica:

- **The model** comes from ``AZUREML_MODEL_DIR``, where Azure ML mounts the deployment's
  registered model (``/var/azureml-app/azureml-models/<name>/<version>``, read-only). The
  model is the MLflow-format folder a training job wrote (app/ml/train_job.py); the serving
  package (``signature.json`` + ``model.joblib``) is found inside it (``package/``). Its
  signature carries no version (the registry assigned it after training), so the package is
  staged into a writable folder with the registered version stamped in: from
  ``MODELGATE_MODEL_VERSION`` when the deployment sets it, else the version folder of
  ``AZUREML_MODEL_DIR``.
- **Keys**: the endpoint enforces them. Azure ML's inference router checks the endpoint key
  (``Authorization: Bearer <key>``, primary or secondary) before a request reaches the
  container, and the keys belong to the endpoint, not to the container, which never sees
  them; so the container checks none. Its port is reachable only through the router (the
  cluster's internal network), never directly.
- The port binds at once: liveness answers while the model loads and self-tests, readiness
  only after (Kubernetes then routes traffic to the pod).
"""

from __future__ import annotations

import os

# One numeric thread per process, set before numpy/BLAS can be imported (as app.serving).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from app.serving.keys import KeyStore  # noqa: E402

log = logging.getLogger("app.serving.azureml")

PORT = 5001
MODEL_DIR_ENV = "AZUREML_MODEL_DIR"
VERSION_ENV = "MODELGATE_MODEL_VERSION"
PACKAGE_FILES = ("signature.json", "model.joblib")
_SEARCH_DEPTH = 4


class PackageNotFound(Exception):
    """AZUREML_MODEL_DIR holds no (or more than one) serving package, or no version."""


class EndpointKeys(KeyStore):
    """The key check of a container behind Azure ML's inference router, which has checked the
    endpoint key already: every request that reaches the container is accepted."""

    def __init__(self) -> None:  # no keys file: the keys belong to the endpoint
        self.path = Path("/nonexistent/endpoint-enforced-keys")

    def refresh(self) -> None:
        return None

    def check(self, presented: bytes | None) -> bool:
        return True


def find_package(model_dir: Path) -> Path:
    """The folder under ``model_dir`` holding the serving package (the shallowest one).

    Raises:
        PackageNotFound: none, or two at the same depth.
    """
    if not model_dir.is_dir():
        raise PackageNotFound(f"{MODEL_DIR_ENV} {model_dir} is not a directory")
    level = [model_dir]
    for _ in range(_SEARCH_DEPTH + 1):
        found = [d for d in level if all((d / f).is_file() for f in PACKAGE_FILES)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise PackageNotFound(f"{model_dir} holds several serving packages: "
                                  f"{', '.join(str(d) for d in found)}")
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir())
    raise PackageNotFound(f"no serving package ({' + '.join(PACKAGE_FILES)}) under {model_dir}: "
                          "was the model registered from a modelgate training job's output?")


def registered_version(model_dir: Path, env: Mapping[str, str]) -> str | None:
    """The registered version: ``MODELGATE_MODEL_VERSION``, else the version folder Azure ML
    mounts the model in (``…/azureml-models/<name>/<version>``), else None."""
    given = env.get(VERSION_ENV, "").strip()
    if given:
        return given
    name = model_dir.resolve().name
    return name if name.isdigit() else None


def stage_package(model_dir: Path, dest: Path, env: Mapping[str, str] = os.environ) -> Path:
    """Stage the serving package found under ``model_dir`` into ``dest`` with the registered
    version in its signature (the pipeline file is linked, not copied).

    Raises:
        PackageNotFound: no package, or no version to give it.
    """
    from app.ml.signature import Signature

    package = find_package(model_dir)
    signature = Signature.load(package / "signature.json")
    version = registered_version(model_dir, env) or signature.version
    if not version:
        raise PackageNotFound(f"no model version: set {VERSION_ENV} on the deployment, or "
                              f"mount the model at …/<name>/<version> ({model_dir})")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "signature.json").write_text(signature.with_version(version).to_json(),
                                         encoding="utf-8")
    link = dest / "model.joblib"
    link.unlink(missing_ok=True)
    link.symlink_to((package / "model.joblib").resolve())
    log.info("serving package %s staged as %s version %s", package, signature.name, version)
    return dest


async def serve(package_dir: Path, host: str, port: int, *, drain_seconds: float = 2.0,
                shutdown_timeout: float = 30.0) -> None:
    """Serve until SIGTERM/SIGINT; the model loads in the background (liveness answers, and
    readiness once the self-test passed)."""
    from aiohttp import web

    from app.serving.app import STATE, create_scoring_app

    app = create_scoring_app(package_dir, EndpointKeys().path)
    state = app[STATE]
    state.keys = EndpointKeys()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    log.info("Azure ML scoring container listening on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    state.draining = True  # readiness answers 503: Kubernetes stops routing to the pod
    await asyncio.sleep(drain_seconds)
    await site.stop()
    deadline = loop.time() + shutdown_timeout
    while state.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await runner.cleanup()
    log.info("stopped")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (the image's defaults suit Azure ML)."""
    parser = argparse.ArgumentParser(prog="python -m app.serving.azureml",
                                     description=__doc__.splitlines()[0])
    # all interfaces of the pod: only Azure ML's inference router reaches them
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--stage-dir", type=Path, default=None,
                        help="writable folder for the staged package (default: a temporary one)")
    parser.add_argument("--drain-seconds", type=float, default=2.0)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    """Entry point: stage the package from AZUREML_MODEL_DIR, then serve; exit 3 when there is
    nothing to serve (the deployment's logs say why)."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    model_dir = env.get(MODEL_DIR_ENV, "")
    if not model_dir:
        log.error("%s is not set: run this image as an Azure ML online deployment with a "
                  "registered model", MODEL_DIR_ENV)
        return 3
    stage = args.stage_dir or Path(tempfile.mkdtemp(prefix="modelgate-model-"))
    try:
        package = stage_package(Path(model_dir), stage, env)
    except (PackageNotFound, OSError, ValueError) as exc:
        log.error("cannot serve: %s", exc)
        return 3
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(package, args.host, args.port, drain_seconds=args.drain_seconds))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (as the local replicas use it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    raise SystemExit(main())
