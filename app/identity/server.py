"""Run the issuer over HTTPS with gunicorn (one gthread worker) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from app.identity.app import create_app
from app.identity.settings import settings_from_env
from app.pki import ensure_tls

log = logging.getLogger("modelgate.identity")

# The request line is logged without its query string: end-session URLs carry id_token_hint.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
READY_FILE = "issuer.json"


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn's programmatic entry point around an already-built Flask app."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _write_ready(path: Path, issuer: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"issuer": issuer, "pid": os.getpid()}), encoding="utf-8")
    os.replace(tmp, path)


def _configure_logging() -> None:
    """Entry-point logging: our INFO lines to stderr, next to gunicorn's."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("modelgate").setLevel(logging.INFO)


def serve(home: Path, host: str = "127.0.0.1", port: int = 8443) -> None:
    """Serve the issuer at https://host:port/local, blocking; SIGTERM/SIGINT stop it cleanly.

    Port 0 picks a free port. Once listening, MODELGATE_HOME/identity/issuer.json holds
    {"issuer": <url>, "pid": <pid>}; it is removed on exit. Call from the main thread.
    """
    _configure_logging()
    home = Path(home)
    if port == 0:
        port = _free_port(host)
    settings = settings_from_env(home, host, port)
    tls = ensure_tls(home)
    app = create_app(settings)
    ready = settings.state_dir / READY_FILE

    def when_ready(_arbiter: Any) -> None:
        _write_ready(ready, settings.issuer)
        log.info("issuer ready at %s", settings.issuer)

    def on_exit(_arbiter: Any) -> None:
        ready.unlink(missing_ok=True)

    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": 1,  # the sign-in throttle lives in memory: one process sees every attempt
        "worker_class": "gthread",
        "threads": 8,
        "certfile": str(tls.server_cert),
        "keyfile": str(tls.server_key),
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": "-",
        "loglevel": "info",
        "timeout": 30,
        "graceful_timeout": 5,
        "proc_name": "modelgate-idp",
        "control_socket_disable": True,
        "when_ready": when_ready,
        "on_exit": on_exit,
    }
    try:
        _Gunicorn(app, options).run()
    except SystemExit as exc:  # gunicorn's arbiter exits via sys.exit, also on a clean stop
        if exc.code not in (0, None):
            raise
