"""modelgate's local OpenID Connect issuer (its own app factory; see app.identity.app).

Public surface: `serve`, `issuer_url`, `rotate_keys`, `create_app`, `ensure_dev_credentials`.
Flask, Authlib and gunicorn are imported only when the issuer is built or served.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.identity.credentials import ensure_dev_credentials
from app.identity.keys import KeyRotationError, RotationResult, rotate_keys
from app.identity.settings import IssuerSettings, issuer_url, settings_from_env

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "IssuerSettings", "KeyRotationError", "RotationResult", "create_app",
    "ensure_dev_credentials", "issuer_url", "rotate_keys", "serve", "settings_from_env",
]


def serve(home: Path, host: str = "127.0.0.1", port: int = 8443) -> None:
    """Run the issuer over HTTPS until SIGTERM (see app.identity.server.serve)."""
    from app.identity.server import serve as _serve

    _serve(Path(home), host, port)


def create_app(settings: IssuerSettings) -> Flask:
    """Build the issuer's Flask app (see app.identity.app.create_app)."""
    from app.identity.app import create_app as _create_app

    return _create_app(settings)
