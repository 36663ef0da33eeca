"""Production WSGI serving of a Flask app with gunicorn, started from our own commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """Run a WSGI app factory under gunicorn with options given in code, not a config file."""

    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self._factory()


def serve_wsgi(factory: Callable[[], Any], *, host: str, port: int, workers: int = 2,
               threads: int = 8, timeout: int = 120, certfile: str | None = None,
               keyfile: str | None = None, accesslog: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; gthread workers so live (SSE) streams don't block others."""
    GunicornServer(factory, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
        "certfile": certfile,
        "keyfile": keyfile,
        "accesslog": accesslog,
        "errorlog": "-",
        "loglevel": "warning",
        "preload_app": False,
        "proc_name": "modelgate-panel",
    }).run()
