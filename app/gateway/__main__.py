"""python -m app.gateway --home DIR --port N --redis-url URL [--workers N]."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from app.gateway.app import serve
from app.gateway.state import GatewaySettings
from app.gateway.workers import (
    MAX_WORKERS,
    WORKERS_ENV,
    parse_workers,
    serve_workers,
    workers_from_env,
)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until SIGTERM (one process, or a supervisor of --workers)."""
    parser = argparse.ArgumentParser(prog="python -m app.gateway")
    parser.add_argument("--home", default=os.environ.get("MODELGATE_HOME", "instance"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis-url", default=os.environ.get("MODELGATE_REDIS_URL"))
    parser.add_argument("--workers", default=None, metavar="N",
                        help=f"gateway processes sharing the port with SO_REUSEPORT, 1 to "
                             f"{MAX_WORKERS} (default: {WORKERS_ENV}, else 1)")
    args = parser.parse_args(argv)
    try:
        workers = (parse_workers(args.workers, "--workers") if args.workers is not None
                   else workers_from_env(os.environ))
        settings = GatewaySettings.from_env(os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.redis_url:
        parser.error("the gateway needs a Redis URL (--redis-url or MODELGATE_REDIS_URL)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if workers == 1:
        serve(Path(args.home), args.host, args.port, redis_url=args.redis_url, settings=settings)
        return
    sys.exit(serve_workers(Path(args.home), args.host, args.port, redis_url=args.redis_url,
                           workers=workers, settings=settings))


if __name__ == "__main__":
    main()
