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
        app = self._factory()
        warm_up(app)
        return app


def warm_up(app: Any) -> None:
    """Pay one-time costs before the first request, then freeze the start-up heap.

    The registry pages import MLflow (about a second) on first use; doing it here keeps that
    off a user's request. gc.freeze() then moves everything loaded so far out of the
    collector's view: without it, periodic full collections walk MLflow's and scikit-learn's
    object graph and stall a request for 200-300 ms (bench/page_bench.py, p99).
    """
    import gc

    with app.app_context():
        try:
            from app.services import models

            models.registry()
        except Exception as exc:  # a broken pipeline config shows on the pages, not here
            app.logger.warning("registry warm-up skipped: %s", exc.__class__.__name__)
    gc.collect()
    gc.freeze()


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
