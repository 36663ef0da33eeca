"""`python -m app.identity [serve] --home DIR --port N` and `python -m app.identity rotate-keys`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.identity.keys import KeyRotationError, rotate_keys


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the issuer or a key rotation step."""
    parser = argparse.ArgumentParser(prog="python -m app.identity",
                                     description="modelgate's local OpenID Connect issuer")
    parser.add_argument("--home", type=Path,
                        default=Path(os.environ.get("MODELGATE_HOME", "instance")),
                        help="instance folder (default: $MODELGATE_HOME or ./instance)")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="run the issuer (the default)")
    for p in (parser, run):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8443)
    rot = sub.add_parser("rotate-keys", help="one signing-key rotation step")
    rot.add_argument("--force", action="store_true",
                     help="activate the next key even if it was published under a minute ago")
    args = parser.parse_args(argv)
    if args.command == "rotate-keys":
        try:
            result = rotate_keys(args.home, force=args.force)
        except KeyRotationError as exc:
            print(f"rotate-keys refused: {exc}", file=sys.stderr)
            return 2
        print(f"signing key: {result.signing_kid}\nnext key:    {result.next_kid}\n"
              f"retired:     {', '.join(result.retired_kids) or '-'}")
        return 0
    from app.identity.server import serve  # gunicorn only when serving

    serve(args.home, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
