"""Gateway settings and the per-app runtime state shared by the handlers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.gateway.config import GatewayConfig
from app.gateway.jwt import JwksRegistry, JwksSettings
from app.gateway.observability import GatewayMetrics, RequestLog
from app.gateway.ratelimit import RateLimiter
from app.gateway.upstream import UpstreamPool


@dataclass(frozen=True)
class GatewaySettings:
    """Timeouts and limits (defaults for production; tests shorten them)."""

    upstream_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    jwks: JwksSettings = field(default_factory=JwksSettings)
    reload_interval_s: float = 0.25
    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 16384
    keepalive_timeout_s: float = 75.0
    request_timeout_s: float = 30.0
    log_flush_interval_s: float = 0.5
    redis_timeout_s: float = 0.5
    pool_size: int = 100
    #: connections to one backend origin at once (in use, idle or opening); more requests wait
    max_backend_connections: int = 256
    #: how long a request waits for a free backend connection before it is answered 503
    backend_wait_s: float = 1.0
    ca_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        """Defaults overridden by MODELGATE_GATEWAY_* variables; ValueError names a bad one."""
        settings = cls()
        raw = environ.get(_MAX_CONNECTIONS_ENV)
        if raw is not None:
            if not raw.strip().isdigit() or int(raw) < 1:
                raise ValueError(f"{_MAX_CONNECTIONS_ENV} must be a whole number of at least 1, "
                                 f"not {raw!r}")
            settings = replace(settings, max_backend_connections=int(raw))
        raw = environ.get(_WAIT_ENV)
        if raw is not None:
            try:
                wait = float(raw)
            except ValueError:
                wait = -1.0
            if not 0 <= wait <= 60:
                raise ValueError(f"{_WAIT_ENV} must be a number of seconds from 0 to 60, "
                                 f"not {raw!r}")
            settings = replace(settings, backend_wait_s=wait)
        return settings


_MAX_CONNECTIONS_ENV = "MODELGATE_GATEWAY_MAX_BACKEND_CONNECTIONS"
_WAIT_ENV = "MODELGATE_GATEWAY_BACKEND_WAIT_SECONDS"


class GatewayState:
    """Live state: the current config (swapped on reload), JWKS caches, limiter, upstream pool."""

    def __init__(self, home: Path, config_path: Path, settings: GatewaySettings,
                 config: GatewayConfig, jwks: JwksRegistry, limiter: RateLimiter,
                 metrics: GatewayMetrics, request_log: RequestLog,
                 upstream: UpstreamPool) -> None:
        self.home = home
        self.config_path = config_path
        self.settings = settings
        self.config = config
        self.jwks = jwks
        self.limiter = limiter
        self.metrics = metrics
        self.request_log = request_log
        self.upstream = upstream
