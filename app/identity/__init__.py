"""modelgate's local OpenID Connect issuer (its own app factory; see app.identity.app).

Public surface: `serve`, `issuer_url`, `rotate_keys`, `create_app`, `ensure_dev_credentials`.
"""

from __future__ import annotations

from app.identity.credentials import ensure_dev_credentials
from app.identity.keys import KeyRotationError, RotationResult, rotate_keys
from app.identity.settings import IssuerSettings, issuer_url, settings_from_env

__all__ = [
    "IssuerSettings", "KeyRotationError", "RotationResult", "create_app",
    "ensure_dev_credentials", "issuer_url", "rotate_keys", "serve", "settings_from_env",
]


def serve(home: object, host: str = "127.0.0.1", port: int = 8443) -> None:
    """Run the issuer over HTTPS until SIGTERM (see app.identity.server.serve)."""
    from pathlib import Path

    from app.identity.server import serve as _serve  # gunicorn and Flask load lazily

    _serve(Path(str(home)), host, port)


def create_app(settings: IssuerSettings) -> object:
    """Build the issuer's Flask app (see app.identity.app.create_app)."""
    from app.identity.app import create_app as _create_app

    return _create_app(settings)
