"""python -m app.gateway --home DIR --port N --redis-url URL."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from app.gateway.app import serve


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m app.gateway")
    parser.add_argument("--home", default=os.environ.get("MODELGATE_HOME", "instance"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis-url", default=os.environ.get("MODELGATE_REDIS_URL"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(Path(args.home), args.host, args.port, redis_url=args.redis_url)


if __name__ == "__main__":
    main()
