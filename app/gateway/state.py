"""Gateway settings and the per-app runtime state shared by the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    ca_file: Path | None = None


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
