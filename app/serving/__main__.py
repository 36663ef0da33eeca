"""Scoring replica entry point: ``python -m app.serving --model-dir DIR --keys-file FILE ...``."""

from __future__ import annotations

import os

# One numeric thread per process, set before numpy/BLAS can be imported: replicas of a slot
# share the cores, and BLAS thread pools only add contention on one-row requests.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from app.serving.sampling import Sampler

log = logging.getLogger("app.serving")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of a scoring replica."""
    parser = argparse.ArgumentParser(prog="python -m app.serving", description=__doc__)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--keys-file", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument(
        "--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=2.0,
        help="after SIGTERM, the port closes at once; open connections get this long to finish",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop; auto uses uvloop when it is installed",
    )
    parser.add_argument(
        "--bind-early",
        action="store_true",
        help="listen while the model loads (health answers 503); default: load, then listen",
    )
    parser.add_argument("--environment", default="",
                        help="the environment this replica serves (names its drift sample store)")
    parser.add_argument("--sample-rate", type=float, default=0.0,
                        help="share of scored records kept for drift checks (0: off; needs "
                             "--environment and MODELGATE_REDIS_URL)")
    parser.add_argument("--sample-max", type=int, default=10_000,
                        help="records the environment's drift sample store keeps")
    parser.add_argument("--sample-flush-seconds", type=float, default=1.0,
                        help="how often sampled records are written to the store")
    parser.add_argument("--access-log", action="store_true", help="log every request line")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Run one replica until SIGTERM/SIGINT, then finish in-flight requests and exit."""
    from aiohttp import web

    from app.serving.app import STATE, create_scoring_app
    from app.serving.model import ModelLoadError, ScoringModel, load_model

    model: ScoringModel | None = None
    if not args.bind_early:
        # Replicas of a slot share the port: binding before the model is ready would let the
        # kernel hand new connections to a replica that can only answer 503.
        try:
            model = await asyncio.get_running_loop().run_in_executor(
                None, load_model, args.model_dir
            )
        except ModelLoadError as exc:
            log.error("model load failed, not binding the port: %s", exc)
            raise SystemExit(3) from None
    app = create_scoring_app(args.model_dir, args.keys_file, model=model,
                             sampler=make_sampler(args))
    # The default access log line holds no Authorization header; off unless asked, for speed.
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
        shutdown_timeout=args.shutdown_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_port=True, backlog=1024)
    await site.start()
    log.info("scoring replica pid %d listening on %s:%d", os.getpid(), args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    state = app[STATE]
    state.draining = True
    await site.stop()  # new connections now go to the other replicas sharing the port
    log.info("stopping: draining open connections for up to %.1fs", args.drain_seconds)
    # Open keep-alive connections get "Connection: close" on their next response; closing
    # them while idle could race a request the client is sending, so give clients time to
    # finish with them. aiohttp's cleanup also drops bytes still arriving on a connection, so
    # a request whose body is still streaming must complete before it runs.
    server = runner.server
    drain_until = loop.time() + args.drain_seconds
    while loop.time() < drain_until and (state.in_flight or (server and server.connections)):
        await asyncio.sleep(0.01)
    deadline = loop.time() + args.shutdown_timeout
    while state.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await runner.cleanup()
    log.info("stopped")


def make_sampler(args: argparse.Namespace) -> Sampler | None:
    """The drift sampler the options ask for, or None (off, or no store to write to)."""
    from app.serving.sampling import Sampler, SamplingSettings

    if args.sample_rate <= 0:
        return None
    # The store's URL may carry a password: it comes from the environment, never argv.
    url = os.environ.get("MODELGATE_REDIS_URL", "")
    if not args.environment or not url:
        log.warning("drift sampling off: it needs --environment and MODELGATE_REDIS_URL")
        return None
    log.info("drift sampling %.3g of scored records into %s's store (newest %d kept)",
             args.sample_rate, args.environment, args.sample_max)
    return Sampler(SamplingSettings(environment=args.environment, rate=args.sample_rate,
                                    max_samples=args.sample_max, redis_url=url,
                                    flush_seconds=args.sample_flush_seconds))


def supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start args.workers single-worker replicas on the same port; forward signals; wait."""
    command = [sys.executable, "-m", "app.serving", *argv, "--workers", "1"]
    children = [subprocess.Popen(command) for _ in range(args.workers)]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs, default=0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one replica in this process, or a small supervisor for --workers N."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    if not 1 <= args.workers <= 64:
        raise SystemExit("--workers must be in 1..64")
    # Fail fast on a misconfigured start; later disappearance of the keys file denies all keys.
    if not args.keys_file.is_file():
        raise SystemExit(f"keys file {args.keys_file} not found")
    if not args.model_dir.is_dir():
        raise SystemExit(f"model directory {args.model_dir} not found")
    if not 0.0 <= args.sample_rate <= 1.0 or args.sample_max < 1 \
            or args.sample_flush_seconds <= 0:
        raise SystemExit("--sample-rate must be in 0..1, --sample-max at least 1 and "
                         "--sample-flush-seconds above 0")
    if args.workers > 1:
        without = _strip_workers(raw)
        return supervise(args, without)
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        runner.run(serve(args))
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when chosen (or available under auto), else asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _strip_workers(argv: Sequence[str]) -> list[str]:
    """argv without any --workers option, so children get exactly one."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--workers":
            skip = True
            continue
        if item.startswith("--workers="):
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
